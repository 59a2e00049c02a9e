"""``train.py serve``: the configured module behind ``zoo.serve``'s OpenAI-compatible app, with a checkpoint's
weights on the trainer's device and precision (what ``predict`` would use)."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L


class SteerZooTrainer(L.Trainer):
    """Lightning's ``Trainer`` plus ``serve``: LightningCLI makes each method named in ``subcommands()`` a
    subcommand and reads its options from the method's signature."""

    def serve(
        self,
        model: L.LightningModule,
        datamodule: L.LightningDataModule | None = None,
        ckpt_path: str | None = None,
        host: str = "127.0.0.1",
        port: int = 8000,
        api_key: str | None = None,
        model_name: str | None = None,
        max_batch: int = 32,
        batch_window_ms: float = 5.0,
        max_body_bytes: int = 1 << 20,
    ) -> None:
        """Serve the model behind an OpenAI-compatible API with a ``steer`` field, and a steering page at /.

        Args:
            model: the configured module (its checkpoint weights are loaded into it).
            datamodule: unused (the configs name one for training).
            ckpt_path: the checkpoint to serve: a path, ``last`` or ``best`` (this run's ``checkpoints/``), or
                None for the configured backbone's own weights.
            host: the address to bind; 127.0.0.1 keeps the server private to this machine.
            port: the port (0: a free one; the address is printed).
            api_key: required as ``Authorization: Bearer <key>`` (default: env STEERZOO_API_KEY; none: open).
            model_name: the served model's name (default: the run directory's name, else the class name).
            max_batch: requests generated together at most.
            batch_window_ms: how long a batch waits for more requests after its first.
            max_body_bytes: larger request bodies are refused (413).
        """
        from zoo.serve import run

        app = serving_app(self, model, ckpt_path, api_key=api_key, model_name=model_name, max_batch=max_batch,
                          batch_window_ms=batch_window_ms, max_body_bytes=max_body_bytes)
        if host not in ("127.0.0.1", "localhost", "::1") and not app.state.server.settings.api_key:
            print(f"steerzoo: warning: serving on {host} without an API key (--api_key or STEERZOO_API_KEY)")
        run(app, host, port)


def resolve_checkpoint(trainer: L.Trainer, ckpt_path: str) -> Path:
    """``last`` / ``best`` -> this run's checkpoint file (``<default_root_dir>/checkpoints``); else the path."""
    folder = Path(trainer.default_root_dir) / "checkpoints"
    if ckpt_path == "last":
        return folder / "last.ckpt"
    if ckpt_path == "best":
        best = sorted(folder.glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
        if not best:
            raise FileNotFoundError(f"no best-*.ckpt in {folder}")
        return best[-1]
    return Path(ckpt_path)


def serving_app(trainer: L.Trainer, model: L.LightningModule, ckpt_path: str | None = None, **settings):
    """``zoo.serve``'s app for ``model`` with ``ckpt_path``'s weights, on the trainer's device and precision
    (the same weights, dtype and autocast ``predict`` uses). ``settings``: ``zoo.serve.ServeSettings`` fields."""
    from callbacks.artifacts import load_checkpoint_state
    from zoo.serve import ServeSettings, create_app

    model.configure_model()
    if ckpt_path is not None:
        state = load_checkpoint_state(resolve_checkpoint(trainer, ckpt_path))
        model.on_load_checkpoint(state)  # refuses another model's checkpoint, naming both
        model.load_state_dict(state["state_dict"], strict=model.strict_loading)
    model = trainer.precision_plugin.convert_module(model).to(trainer.strategy.root_device).eval()
    root = Path(trainer.default_root_dir).resolve()
    name = settings.pop("model_name", None) or (root.name if root != Path.cwd().resolve() else type(model).__name__)
    api_key = settings.pop("api_key", None) or os.environ.get("STEERZOO_API_KEY") or None
    serve = ServeSettings(model_name=name, api_key=api_key, default_steer=model.steer_preference, **settings)
    return create_app(model, serve, context=trainer.precision_plugin.forward_context)
