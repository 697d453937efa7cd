"""The Flex Template's entry point (FLEX_TEMPLATE_PYTHON_PY_FILE): `python -m pipeline`, with the template's
parameters turned into the job's flags.

Dataflow's launcher runs `python main.py --NAME=VALUE ...`, one flag per template parameter given, plus its own
pipeline options (--project, --region, --temp_location, --staging_location, --job_name, --setup_file, ...).
metadata.json names the parameters with underscores (requests_per_minute) while the job's flags have dashes
(--requests-per-minute): this maps the one onto the other for the job's own flags only, turns a boolean
parameter (--no_pack=true) into its bare flag (or drops it for false), and names the image's
configs/dataflow.yaml when no config is given. Every other flag goes to Beam untouched, as with
`python -m pipeline`.
"""
import os
import runpy
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# The sdist is unpacked beside this file in the image (deploy/Dockerfile): its configs/ and setup.py are here.
DEFAULT_CONFIG = os.path.join(HERE, "configs", "dataflow.yaml")
_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no", ""}


def job_flags():
    """{name with underscores: (the job's flag, whether it takes a value)} from the job's own parser."""
    from pipeline.config import build_arg_parser

    flags = {}
    for action in build_arg_parser()._actions:
        for option in action.option_strings:
            if option.startswith("--"):
                flags[option[2:].replace("-", "_")] = (option, action.nargs != 0)
    return flags


def translate(argv, default_config=DEFAULT_CONFIG):
    """The launcher's arguments as `python -m pipeline` takes them."""
    flags = job_flags()
    out = []
    for arg in argv:
        name, eq, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        known = flags.get(name.replace("-", "_")) if name else None
        if known is None:
            out.append(arg)
            continue
        flag, takes_value = known
        if takes_value:
            out.append(f"{flag}={value}" if eq else flag)
        elif not eq or value.strip().lower() in _TRUE:
            out.append(flag)
        elif value.strip().lower() not in _FALSE:
            raise SystemExit(f"error: {name}={value!r}: give true or false")
    if "--config" not in out and not any(a.startswith("--config=") for a in out):
        out = ["--config", default_config] + out
    return out


def main():
    # A Flex Template launch must exit once the job is submitted: the next run finalizes the output.
    args = translate(sys.argv[1:])
    if "--no-wait" not in args and "--dry-run" not in args and not any(a in ("-h", "--help") for a in args):
        args.append("--no-wait")
    sys.argv = [sys.argv[0]] + args
    runpy.run_module("pipeline", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
