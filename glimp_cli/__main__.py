"""`python -m glimp_cli` and the `glimp` command."""

import signal
import sys


def main() -> None:
    """Run the CLI; a Ctrl-C while glimp starts (its imports take a second) or winds down exits 130 too."""
    try:
        from glimp_cli.cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:  # before cli.main's own handler is in place, or a second Ctrl-C inside it
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        # The outcome is decided: a Ctrl-C during interpreter shutdown would only add a traceback.
        signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":
    main()
