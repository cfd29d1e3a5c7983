"""Non-Lightning machinery the LightningModules of :mod:`medgr2.modules` run on: FSDP2 sharding and its strategy,
the colocated vLLM rollout engine, the optimizer and schedule, the torch dataset over records, and R_φ's collators."""
