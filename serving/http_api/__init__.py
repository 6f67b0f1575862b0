"""The KServe v2 / Open Inference Protocol REST API (Triton's HTTP endpoints) on aiohttp."""
