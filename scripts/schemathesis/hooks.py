"""Schemathesis hooks for scripts/api-contract.sh.

The run authenticates with the appliance's first admin token. Its stateful phase lists tokens
and revokes what it finds, which would revoke that token and leave every later request a 401:
a revocation of this one token is sent to an id no token has instead (a 404, as documented).
"""

import os

import schemathesis

PROTECTED = os.environ["EDGELB_CONTRACT_TOKEN_ID"]


@schemathesis.hook
def before_call(ctx, case, kwargs):
    if (
        case.method.upper() == "DELETE"
        and case.path == "/api/v1/tokens/{id}"
        and (case.path_parameters or {}).get("id") == PROTECTED
    ):
        case.path_parameters["id"] = "000000000000"
