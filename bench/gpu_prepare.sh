#!/usr/bin/env bash
# Prepare, on a development machine with pip, what bench/gpu_check.sh needs on the device machine
# (which has torch, torchvision, transformers, OpenCV, Pillow, numpy, pytest, but none of the
# packages below, and no network). Both folders are git-ignored (.gitignore: /.whl/ and /.gpu/);
# nothing here is ever committed.
#
#   .whl/site.tar.xz   the project's other runtime packages for CPython 3.12 manylinux x86-64,
#                      versions as installed in the venv, unpacked and xz-compressed: as plain
#                      wheels they are 38 MB (c2pa's alone 16 MB), compressed ~25 MB
#   .gpu/faces/        the test photos the GPU checks read (lfw/, groups/, manifest.csv)
#   .gpu/dlib_face_recognition_resnet_model_v1.dat.xz   the dlib ResNet weights (~21 MB)
#
# Usage (repository root): bash bench/gpu_prepare.sh      (~3 min on 2 busy cores, mostly xz)
# Then: bench/README.md, "GPU check", for the one `run` call.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
FACES=${CONSENTRY_FACES_DIR:-../shared/faces}
LIMIT=$((64 * 1024 * 1024))

# Runtime packages the device lacks (KINDS.md lists what it has), pinned to the venv's versions.
PACKAGES="facenet-pytorch diffusers c2pa-python toml cryptography cffi pycparser pydantic pydantic_core
pydantic-settings typing-inspection annotated-types python-dotenv SQLAlchemy greenlet alembic Mako
aiosqlite tomli_w"
PINS=$("$PY" - $PACKAGES <<'EOF'
import sys
from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in sys.argv[1:]))
EOF
)

rm -rf .whl .gpu
mkdir -p .whl/wheels .gpu/faces
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d .whl/wheels $PINS

# Unzip every wheel into one site folder (what `pip install --no-deps --target` does for these
# pure-layout wheels) and compress it; the device unpacks it with Python's tarfile (no xz needed).
"$PY" - <<'EOF'
import tarfile, zipfile
from pathlib import Path
site = Path(".whl/site")
for wheel in sorted(Path(".whl/wheels").glob("*.whl")):
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
with tarfile.open(".whl/site.tar.xz", "w:xz", preset=6) as tar:
    tar.add(site, arcname="site")
EOF
rm -rf .whl/wheels .whl/site

cp -r "$FACES/lfw" "$FACES/groups" "$FACES/manifest.csv" .gpu/faces/
"$PY" - <<'EOF'
import lzma, shutil
from consentry.detectors.dlib_resnet import default_dlib_weights
source = default_dlib_weights()
with open(source, "rb") as src, lzma.open(f".gpu/{source.name}.xz", "wb", preset=6) as dst:
    shutil.copyfileobj(src, dst)
EOF

# What travels: tracked and untracked-not-ignored files, plus the two carried folders.
tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 -r stat -c %s -- 2>/dev/null \
    | awk '{s += $1} END {print s + 0}')
carried=$(du -sb .whl .gpu | awk '{s += $1} END {print s}')
total=$((tree + carried))
echo "tree $((tree / 1024)) KiB + .whl/.gpu $((carried / 1024)) KiB = $((total / 1024 / 1024)) MiB (limit 64 MiB)"
if [ "$total" -gt "$LIMIT" ]; then
    echo "too large for the device: drop c2pa-python from PACKAGES (the gate overhead then fails at" \
         "signing: run gpu_check.sh with GATE=0) or carry fewer photos" >&2
    exit 1
fi
