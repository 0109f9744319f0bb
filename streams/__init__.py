"""recostream's adapters: the Faust app, the CLI, datasets and the local broker launcher."""
