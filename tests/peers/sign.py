#!/usr/bin/env python3
"""Peer signer/validator for secur360's Rust signature tests.

Reads ONE JSON value on stdin and writes ONE JSON value on stdout.
All cryptography is done by the official SDKs (stripe, twilio); this script
only adapts JSON to their call signatures.

Single request (object) -> single result (object).
Batch (array of requests) -> array of results, in the same order.

Requests:
  {"provider": "stripe", "payload": "<raw body>", "secret": "whsec_...", "timestamp": 123}
      -> {"header": "t=123,v1=..."}
      via stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp=...)
  {"provider": "stripe", "op": "verify", "payload": "...", "header": "...",
   "secret": "whsec_...", "tolerance": 300}
      -> {"valid": true|false}
      via stripe.WebhookSignature.verify_header(payload, header, secret, tolerance)
      (the SDK reads the wall clock; tolerance 0/null disables the age check)
  {"provider": "twilio", "url": "https://...", "params": {...}, "token": "..."}
      -> {"signature": "..."}
      via twilio.request_validator.RequestValidator(token).compute_signature(url, params)
  {"provider": "twilio", "op": "validate", "url": "...", "params": {...},
   "token": "...", "signature": "..."}
      -> {"valid": true|false}
      via twilio.request_validator.RequestValidator(token).validate(url, params, signature)

Twilio "params" may be:
  * an object of string values            {"To": "+33...", "Body": "hé"}  (passed as a plain dict)
  * an object with list values            {"a": ["2", "1"]}              (repeated keys)
  * a list of [key, value] pairs          [["a", "2"], ["a", "1"]]       (repeated keys)
The last two are wrapped in a minimal MultiDict (a dict with .getall(), the
interface the SDK probes for Flask/werkzeug), so the SDK's own repeated-key
handling is exercised.

A request that fails yields {"error": "<message>"} in its slot; the process
still exits 0. Invalid JSON on stdin exits 2.
"""
import json
import sys

import stripe
from twilio.request_validator import RequestValidator


class _MultiDict(dict):
    """key -> list of values; iterating yields keys, like werkzeug's MultiDict."""

    def getall(self, key):
        return list(self[key])


def _twilio_params(raw):
    if raw is None:
        return {}
    if isinstance(raw, list):
        md = _MultiDict()
        for pair in raw:
            key, value = pair
            md.setdefault(str(key), []).append(str(value))
        return md
    if isinstance(raw, dict):
        if any(isinstance(v, list) for v in raw.values()):
            md = _MultiDict()
            for key, value in raw.items():
                values = value if isinstance(value, list) else [value]
                md[str(key)] = [str(v) for v in values]
            return md
        return {str(k): str(v) for k, v in raw.items()}
    raise ValueError("params must be an object or a list of [key, value] pairs")


def _stripe(req):
    op = req.get("op", "sign")
    if op == "sign":
        header = stripe.WebhookSignature.generate_signature_header(
            req["payload"], req["secret"], timestamp=int(req["timestamp"])
        )
        return {"header": header}
    if op == "verify":
        try:
            stripe.WebhookSignature.verify_header(
                req["payload"], req["header"], req["secret"], req.get("tolerance", 300)
            )
            return {"valid": True}
        except stripe.SignatureVerificationError:
            return {"valid": False}
    raise ValueError("unknown stripe op: %r" % op)


def _twilio(req):
    op = req.get("op", "sign")
    validator = RequestValidator(req["token"])
    params = _twilio_params(req.get("params"))
    if op == "sign":
        return {"signature": validator.compute_signature(req["url"], params)}
    if op == "validate":
        return {"valid": bool(validator.validate(req["url"], params, req["signature"]))}
    raise ValueError("unknown twilio op: %r" % op)


def handle(req):
    try:
        if not isinstance(req, dict):
            raise ValueError("request must be a JSON object")
        provider = req.get("provider")
        if provider == "stripe":
            return _stripe(req)
        if provider == "twilio":
            return _twilio(req)
        raise ValueError("unknown provider: %r" % provider)
    except Exception as exc:  # report per item, keep the batch going
        return {"error": "%s: %s" % (type(exc).__name__, exc)}


def main():
    try:
        data = json.loads(sys.stdin.read())
    except ValueError as exc:
        sys.stderr.write("sign.py: invalid JSON on stdin: %s\n" % exc)
        return 2
    result = [handle(r) for r in data] if isinstance(data, list) else handle(data)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
