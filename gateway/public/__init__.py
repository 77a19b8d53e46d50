"""Public verification: the key-less Soft Binding Resolution API's service and the /verify page."""
