"""The spine: config schema, CLI, Dask engine, stage protocol, shard storage and manifests."""
