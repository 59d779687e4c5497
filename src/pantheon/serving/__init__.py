"""HTTP serving of trained models with LitServe: `python -m pantheon.serve ckpt=... | pipeline=...`.

One module per job: `config` (the CLI keys), `validation` (request checking, one-line errors), `middleware`
(the checks and metrics in front of LitServe's /predict), `metrics` (Prometheus, across LitServe's processes),
`encoding` (images -> base64), `gan` and `diffusion` (one LitAPI per model kind), `server` (wiring).
"""
