"""Work that runs on Ray workers: extraction of images sent as bytes, matching of descriptor arrays.

Nothing here reads the driver's files: images, descriptors and weights arrive as bytes or arrays
through Ray's object store, and results go back the same way; the driver alone writes outputs.
"""
