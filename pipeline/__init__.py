"""The glue: the shared ``Modality`` vocabulary, the manifest, config, run folders and the CLI."""
