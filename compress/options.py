"""The command line's options: the parser, their bounds, and the checks made before any
input is read or anything is loaded (`cli` runs the commands)."""
from __future__ import annotations

import argparse

from engine.host import MAX_THREADS

from .defaults import DEFAULT_LANES, DEFAULT_MAX_BATCH, MAX_DEFAULT_JOBS, default_jobs
from .errors import CompressError
from .format import MAX_BATCH, MAX_LANES

PROG = "python -m compress"
MAX_JOBS = 64  # worker processes (each loads torch and the model)


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 1 (not argparse's usage and 2)
        raise CompressError(message)


def build_parser() -> Parser:
    common = Parser(add_help=False)
    common.add_argument("--model", metavar="DIR", help="model checkpoint directory (default: the shipped model)")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bar, summary or messages")
    # Only the encoder chooses numerics; the decoder rebuilds them from the file's header.
    common.add_argument("--device", help="cpu or cuda (default: cuda if available, else cpu); decoding a "
                                         "float-numerics file needs the device kind it was made on")
    common.add_argument("--threads", type=int,
                        help=f"torch CPU threads, 1..{MAX_THREADS} (default: exact numerics, which do not depend "
                             "on it: the usable CPUs, shared among the decoding jobs; float numerics: 1, which "
                             "the file records and its decoder uses)")
    numerics = Parser(add_help=False)
    numerics.add_argument("--numerics", default="exact", choices=("exact", "float"),
                          help="exact: integer arithmetic, files decode on any machine; float: the model's "
                               "float arithmetic, files decode only with the same numerics (default: %(default)s)")
    numerics.add_argument("--backend", default="auto", choices=("auto", "torch", "triton"),
                          help="float numerics: engine op set (default: %(default)s)")
    numerics.add_argument("--compile", action=argparse.BooleanOptionalAction,
                          help="float numerics: torch.compile the model (default: on CUDA only)")
    files = Parser(add_help=False)
    files.add_argument("paths", nargs="+", metavar="PATH",
                       help="IN... OUT: files, directories or - (stdin/stdout); several inputs need an existing "
                            "OUT directory (or OUT/ to create it); a lone IN writes beside itself "
                            "(x.npy -> x.npy.cvq -> x.npy)")
    files.add_argument("-f", "--force", action="store_true", help="overwrite existing output files")

    jobs = Parser(add_help=False)
    jobs.add_argument("--jobs", type=int, default=default_jobs(),
                      help=f"worker processes decoding several files at once, 1..{MAX_JOBS}, each with its own "
                           "copy of torch and the model (default: the usable CPUs, at most "
                           f"{MAX_DEFAULT_JOBS}: %(default)s)")
    parser = Parser(prog=PROG, description="Lossless compression of commaVQ token segments with the world model.")
    commands = parser.add_subparsers(dest="command", required=True)
    encode = commands.add_parser("encode", parents=[files, common, numerics], help="compress .npy token arrays")
    encode.add_argument("--dataset", action="store_true",
                        help="inputs are commaVQ webdataset shards (data-XXXX.tar.gz): one output per segment key")
    encode.add_argument("--window", type=int, help="frames per model window (default: the model's)")
    encode.add_argument("--stride", type=int, default=1,
                        help="frames coded per window, 1..window-1; the rest of the window is context "
                             "(default: %(default)s, best rate)")
    encode.add_argument("--lanes", type=int, default=DEFAULT_LANES,
                        help=f"independent runs per segment, 1..{MAX_LANES}: faster decoding, slightly larger "
                             "files (default: %(default)s)")
    encode.add_argument("--no-mixing", dest="mixing", action="store_false",
                        help="code with the model alone, without the context mixer learned while coding")
    encode.add_argument("--batch", type=int, default=DEFAULT_MAX_BATCH,
                        help=f"float numerics: streams per engine call, 1..{MAX_BATCH}, fewer if there are "
                             "fewer lanes (default: %(default)s)")
    decode = commands.add_parser("decode", parents=[files, common, jobs], help="restore the exact .npy files")
    decode.add_argument("--batch", type=int, help=f"engine max_batch, 1..{MAX_BATCH} (default: what the files need)")
    commands.add_parser("info", help="print the header").add_argument("files", nargs="+", metavar="FILE")
    test = commands.add_parser("test", parents=[common, jobs], help="decode and verify without writing")
    test.add_argument("files", nargs="+", metavar="FILE")
    return parser


def check_options(args: argparse.Namespace) -> None:
    """Refuse bad numbers and option combinations before reading inputs or loading anything."""
    if getattr(args, "batch", None) is not None and not 1 <= args.batch <= MAX_BATCH:
        raise CompressError(f"--batch must be 1..{MAX_BATCH}, got {args.batch}")
    if not 1 <= getattr(args, "jobs", 1) <= MAX_JOBS:
        raise CompressError(f"--jobs must be 1..{MAX_JOBS}, got {args.jobs}")
    if args.threads is not None and not 1 <= args.threads <= MAX_THREADS:
        raise CompressError(f"--threads must be 1..{MAX_THREADS}, got {args.threads}")
    if getattr(args, "numerics", None) == "exact" and (args.compile or args.backend == "triton"):
        raise CompressError("--compile and --backend triton apply to --numerics float only: "
                            "exact numerics run eagerly in their own integer arithmetic")
