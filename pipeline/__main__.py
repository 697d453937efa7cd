"""python -m pipeline --config FILE [overrides] [Beam flags]"""
import logging
import os
import sys


def _quiet_known_noise(record: logging.LogRecord) -> bool:
    # Beam warns about optional GCP libraries at import on every run, and its S3 and GCS filesystems log every
    # listing on the root logger: neither says anything about this job.
    message = record.getMessage()
    return "apitools not found" not in message and not message.startswith("Finished listing ")


class _ScrubSecrets(logging.Filter):
    """Masks the API key and URL credentials in every log line, whatever logged it."""

    def filter(self, record: logging.LogRecord) -> bool:
        from embed_client.secrets import scrub

        message = record.getMessage()
        cleaned = scrub(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        return True


def _key_problem(exc: BaseException):
    """The ApiKeyRejected message inside whatever the runner wrapped it in, or None."""
    import re

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        found = re.search(r"((?:The API refused the key|No API key|The API key from).*?)(?: \[while running|$)", str(exc), re.S)
        if found:
            return found.group(1).strip()
        exc = exc.__cause__ or exc.__context__
    return None


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_quiet_known_noise)
        handler.addFilter(_ScrubSecrets())
    for noisy in ("apache_beam", "urllib3", "botocore"):  # botocore: "Found credentials in ..." on every run
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Beam logs a failed bundle's traceback and then raises it: the raise below is enough.
    logging.getLogger("apache_beam.runners.common").setLevel(logging.CRITICAL)
    argv = sys.argv[1:] if argv is None else list(argv)
    # --debug: the traceback of any failure, for a bug report; without it, one line.
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if argv[:1] == ["config"]:
        from pipeline.settings import reference

        print(reference())
        return 0
    if argv[:1] == ["search"]:
        from pipeline.search import search_main

        return search_main(argv[1:])
    from pipeline.config import parse_args
    from pipeline.report.status import EXIT_CODES
    from pipeline.report.summary import format_summary
    from pipeline.run import run_job
    from transforms.settings import ConfigError
    from transforms.store.lock import OutputLocked

    try:
        config, _ = parse_args(argv)
        summary = run_job(config, progress=True)
    except ConfigError as exc:
        if debug:
            raise
        # A setting that cannot work: one line saying what and how to fix it, before any call.
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CODES["usage_error"]
    except OutputLocked as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CODES["locked"]
    except Exception as exc:
        if debug:
            raise
        message = _key_problem(exc)
        if message is not None:
            # One clear line, not the runner's traceback: nothing else will work until the key is fixed.
            print(f"error: {message}", file=sys.stderr)
            return EXIT_CODES["usage_error"]
        from embed_client.secrets import scrub

        reason = scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else "")
        print(f"error: the job failed: {type(exc).__name__}: {reason[:500]} (run again with --debug for the "
              "traceback)", file=sys.stderr)
        return EXIT_CODES["failed"]
    if getattr(config, "json_output", False):
        import json

        print(json.dumps(summary, indent=2, default=str))  # machine-readable: the plan or the run's summary
    else:
        print(format_summary(summary))
    return int(summary.get("exit_code", 0))


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    # The job is done and its files are committed. Skip interpreter teardown: native threads left by
    # Beam's gRPC/Arrow can abort the process there ("terminate called...") and turn success into a crash.
    os._exit(code)
