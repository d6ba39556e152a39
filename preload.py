"""WebUI command-line flags of the extension (read by the WebUI before its own argument parsing)."""

OPERATORS_FLAG = "--safe-denoiser-operators"


def preload(parser) -> None:
    parser.add_argument(OPERATORS_FLAG, type=str, default=None, metavar="NAMES",
                        help="Safe Denoiser: comma-separated user names (of --gradio-auth / --api-auth) who are "
                             "operators: they edit the policy, global presets and shared banks. More operators can be "
                             "named in the policy itself.")
