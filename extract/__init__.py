"""Stage one: fetching media from manifests, decoding it, and running frozen backbones."""
