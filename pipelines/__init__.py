"""Ray Data pipelines: readers -> preprocess -> generate -> score -> filter -> writers -> _summary.json."""
