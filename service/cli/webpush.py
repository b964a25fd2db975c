"""``tocsin webpush keys``: make the VAPID key pair Web Push needs (RFC 8292)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from service.providers import vapid


def add_commands(sub: Any) -> None:
    webpush = sub.add_parser("webpush", help="Web Push: make the VAPID key pair")
    verbs = webpush.add_subparsers(dest="verb", required=True)
    keys = verbs.add_parser(
        "keys",
        help="write a new VAPID private key (PEM, mode 0600) and print its public key",
        description="Writes the private key for providers.webpush.vapid_private_key_path and prints the "
        "public key (the applicationServerKey a page subscribes with; the service also serves it at "
        "GET /v1/webpush/vapid-public-key). An existing file is never overwritten.",
    )
    keys.add_argument(
        "--out", "-o", type=Path, default=Path("vapid-private.pem"), help="default ./vapid-private.pem"
    )
    keys.add_argument("--json", action="store_true", help='print {"private_key_path", "public_key"}')
    keys.set_defaults(func=_keys)


def _keys(args: argparse.Namespace) -> int:
    try:
        public = vapid.generate(args.out)
    except FileExistsError:
        print(
            f"error: {args.out} exists; not overwriting a key that subscriptions depend on", file=sys.stderr
        )
        return 1
    except OSError as exc:
        print(f"error: cannot write {args.out}: {exc.strerror}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"private_key_path": str(args.out), "public_key": public}))
    else:
        print(
            f"wrote the VAPID private key to {args.out} (keep it secret; set providers.webpush."
            "vapid_private_key_path)",
            file=sys.stderr,
        )
        print(public)
    return 0
