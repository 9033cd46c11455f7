"""CLI verb ``publish``: a phone bundle onto a channel of the fleet's signed update feed.

``edgeship publish deployment=posture_phone fleet=phones channel=beta --fraction 0.2``
uploads the bundle over SSH to the feed host and signs a new index that offers it
to 20% of the channel's installations. The logic lives in
:mod:`orchestrator.ship.feed`; apps run :mod:`orchestrator.device.phone_client`.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from orchestrator.cli.common import CLI, human_size, integer, key_store, pairs, project_dir, words
from orchestrator.cli.ship import bundle_from
from orchestrator.errors import Problem, UsageError


def cmd_publish(args: argparse.Namespace) -> int:
    from orchestrator.ship.feed import publish, record_publication, show_index
    from orchestrator.spec.fleet import load_fleet

    opts = pairs(args.overrides, ("deployment", "fleet", "channel", "version"), ("fleet",))
    root = project_dir()
    fleet = load_fleet(opts["fleet"], root)
    store = key_store()
    if args.refresh:
        from orchestrator.ship.feed import refresh_feed

        serial, expires = refresh_feed(fleet, store)
        print(
            f"feed of fleet {fleet.name}: timestamp over index {serial} re-signed, "
            f"expires {expires}"
        )
        return 0
    if args.show:
        serial, index = show_index(fleet, store)
        if index is None:
            print(f"feed of fleet {fleet.name}: nothing published yet")
            return 0
        if args.json:
            print(json.dumps(index, indent=2, sort_keys=True))
            return 0
        print(
            f"feed of fleet {fleet.name}: index {serial}, created {index['created_at']}, "
            f"expires {index['expires_at']}, signed by {index['signing']['key_id']}"
        )
        for channel, e in sorted((index.get("channels") or {}).items()):
            fb = e.get("fallback")
            print(
                f"  {channel:<8} {e['deployment']} v{e['version']} ({e['manifest_sha256'][:12]}) "
                f"to {float(e['rollout_fraction']):.0%}"
                + (f", others v{fb['version']}" if fb else "")
                + f"; published {e['published_at']}"
            )
        return 0
    if "channel" not in opts:
        raise UsageError([Problem(CLI, "channel", "missing; expected channel=NAME")])
    integer(opts, "version")
    with bundle_from(args, opts) as bundle:
        pub = publish(fleet, bundle, opts["channel"], args.fraction, store)
        if not args.no_record:
            record_publication(root, fleet, bundle, pub)
    print(
        f"published {pub.deployment} v{pub.version} ({pub.digest[:12]}) on {pub.fleet}/"
        f"{pub.channel} to {pub.fraction:.0%} of installations"
    )
    print(f"  index:     {pub.index_url} (serial {pub.serial}, signed)")
    print(
        f"  fresh:     timestamp expires {pub.timestamp_expires}; re-sign it before then with "
        f"edgeship publish fleet={pub.fleet} --refresh"
    )
    print(
        f"  uploaded:  {pub.files_sent} file(s), {human_size(pub.bytes_sent)} "
        f"({pub.files_present} already on the feed host)"
        + (f"; root versions {', '.join(map(str, pub.trust_sent))}" if pub.trust_sent else "")
    )
    if pub.fraction < 1.0:
        rest = f"v{pub.fallback['version']}" if pub.fallback else "nothing (no earlier release)"
        print(f"  others:    {1 - pub.fraction:.0%} of installations keep {rest}")
    if pub.alias:
        print(f"  mlflow:    {pub.deployment} model version is now alias {pub.alias}")
    for note in pub.notes:
        print(f"  note:      {note}")
    return 0


def register(sub: Any) -> None:
    """Add ``publish`` to the ``edgeship`` parser."""
    p = sub.add_parser(
        "publish", help="phones: publish a bundle on a channel of the fleet's signed update feed"
    )
    words(p, "deployment=NAME fleet=NAME channel=NAME [version=N]")
    p.add_argument(
        "--fraction",
        type=float,
        default=1.0,
        help="share of the channel's installations that take it (staged rollout; default 1)",
    )
    p.add_argument(
        "--bundle", metavar="PATH", help="a bundle folder or exported .tar instead of deployment="
    )
    p.add_argument("--show", action="store_true", help="show the feed's current signed index")
    p.add_argument(
        "--refresh",
        action="store_true",
        help="re-sign the feed's freshness timestamp (run it from cron, more often than "
        "feed.timestamp_valid_hours)",
    )
    p.add_argument("--json", action="store_true", help="with --show: the index as JSON")
    p.add_argument("--no-record", action="store_true", help="do not record it in MLflow")
    p.set_defaults(func=cmd_publish)
