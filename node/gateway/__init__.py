"""The gateway: the OpenAI API over the chain (see DESIGN "Gateway").

`create_app(settings)` builds the FastAPI app; `inferd gateway serve` runs it under uvicorn;
`GatewayServer` runs it inside an existing event loop (tests, benchmarks).
"""
