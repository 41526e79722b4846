#!/usr/bin/env python3
"""Checks that Cargo.toml's rust-version is the true minimum Rust version.

Clippy's `incompatible_msrv` lint (on under `-D warnings`) catches standard
library items newer than rust-version in our code; this script catches a
dependency that needs a newer compiler than rust-version says, and a
rust-version set higher than anything needs (the code's own language
features, let-chains among them, need 1.88: see MINIMUM below).

Usage: scripts/check_msrv.py   (from the repository root; reads `cargo metadata`)
"""

import json
import subprocess
import sys

# What our own code needs: let-chains in `if`/`while` (Rust 1.88, edition 2024).
MINIMUM = (1, 88)

# Features whose dependencies need a newer compiler than rust-version, and
# the version README states for each: burn 0.22 itself needs Rust 1.95.
FEATURE_MINIMUMS = {"burn": (1, 95)}


def version(text):
    return tuple(int(part) for part in text.split(".")[:2])


def newest_need(features):
    """The ecfloat package, and the newest compiler its build with
    `features` needs, with why."""
    metadata = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--locked"]
            + (["--features", ",".join(features)] if features else []),
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    used = {node["id"] for node in metadata["resolve"]["nodes"]}
    ours = next(p for p in metadata["packages"] if p["name"] == "ecfloat")
    needs = [(MINIMUM, "ecfloat's own code (let-chains)")]
    for package in metadata["packages"]:
        if package["id"] in used and package["rust_version"] and package is not ours:
            needs.append(
                (version(package["rust_version"]), f"{package['name']} {package['version']}")
            )
    return ours, max(needs)


def main():
    ours, (true_minimum, why) = newest_need([])
    stated = version(ours["rust_version"])
    print(f"rust-version {ours['rust_version']}; the newest need is {why}: "
          f"{true_minimum[0]}.{true_minimum[1]}")
    if stated != true_minimum:
        print(f"error: Cargo.toml says rust-version {ours['rust_version']}, but the true "
              f"minimum is {true_minimum[0]}.{true_minimum[1]} ({why})", file=sys.stderr)
        return 1
    for feature, stated in FEATURE_MINIMUMS.items():
        _, (needed, why) = newest_need([feature])
        print(f"feature {feature}: Rust {stated[0]}.{stated[1]} stated; the newest need is "
              f"{why}: {needed[0]}.{needed[1]}")
        if needed != stated:
            print(f"error: the {feature} feature needs Rust {needed[0]}.{needed[1]} ({why}), "
                  f"not the {stated[0]}.{stated[1]} stated", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
