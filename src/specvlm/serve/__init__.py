"""`specvlm serve`: an OpenAI-compatible HTTP server (chat completions, streamed or not) in front of lossless
speculative decoding.

    command.py  the command line: options, model loading, uvicorn
    app.py      FastAPI routes, auth, body limit, Server-Sent Events, OpenAI's response and error shapes
    schema.py   the request schema (pydantic) and what it asks for: a user turn or a conversation, + decoding settings
    media.py    image / video URLs -> files (data: URLs decoded, local paths only under the allowed folder)
    worker.py   the one model thread, its bounded queue, streaming text with stop strings, cancellation
    engine.py   the generate command's input pipeline and the generator (or the target alone)
    metrics.py  Prometheus text for /metrics

Only command.py is imported by the CLI at start-up; the web stack loads when the server starts.
"""
