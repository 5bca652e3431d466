"""The Stripe emulator as Stripe's official Python library sees it (run by scripts/test).

A fresh emulator is started for the run (its own port, nothing else on it), then the library
creates, lists, pages and fails the way the service depends on Stripe doing.
"""

import os
import socket
import subprocess
import sys
import time

import stripe

DECLINES = {
    "pm_card_visa_chargeDeclined": "generic_decline",
    "pm_card_visa_chargeDeclinedInsufficientFunds": "insufficient_funds",
    "pm_card_visa_chargeDeclinedLostCard": "lost_card",
    "pm_card_visa_chargeDeclinedStolenCard": "stolen_card",
    "pm_card_chargeDeclinedExpiredCard": "expired_card",
    "pm_card_chargeDeclinedIncorrectCvc": "incorrect_cvc",
    "pm_card_chargeDeclinedProcessingError": "processing_error",
    "pm_card_chargeDeclinedFraudulent": "fraudulent",
    "pm_card_chargeDeclinedLostCard": "lost_card",
    "pm_card_authenticationRequired": "authentication_required",
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_emulator(binary):
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--bind", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("the emulator did not start")


def check(name, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + name + (f": {detail}" if detail and not ok else ""))
    return ok


def main():
    binary = sys.argv[1]
    proc, base = start_emulator(binary)
    stripe.api_key = "sk_test_python"
    stripe.api_base = base
    stripe.max_network_retries = 0
    results = []
    try:
        created = []
        for i in range(23):
            pi = stripe.PaymentIntent.create(
                amount=1000 + i, currency="usd", payment_method="pm_card_visa", confirm=True,
                off_session=True, metadata={"n": str(i)},
            )
            created.append(pi.id)
        results.append(check("a confirmed charge succeeds", pi.status == "succeeded", pi.status))

        # Auto-paging walks starting_after to the end: every object once.
        seen = [p.id for p in stripe.PaymentIntent.list(limit=5).auto_paging_iter()]
        results.append(check("auto-paging reaches the end", sorted(seen) == sorted(created),
                             f"{len(seen)} of {len(created)}"))
        newest_first = list(reversed(created))
        page = stripe.PaymentIntent.list(limit=5, starting_after=newest_first[4])
        results.append(check("starting_after pages to older objects",
                             [p.id for p in page.data] == newest_first[5:10] and page.has_more))
        page = stripe.PaymentIntent.list(limit=3, ending_before=newest_first[10])
        results.append(check("ending_before pages to newer objects",
                             [p.id for p in page.data] == newest_first[7:10] and page.has_more))

        for pm, decline in DECLINES.items():
            try:
                stripe.PaymentIntent.create(amount=1000, currency="usd", payment_method=pm,
                                            confirm=True, off_session=True)
                results.append(check(f"{pm} is declined", False, "it was charged"))
            except stripe.CardError as e:
                got = e.error.decline_code or e.code
                results.append(check(f"{pm} is declined ({decline})", got == decline, got))

        try:
            stripe.PaymentIntent.create(amount=1000, currency="usd", payment_method="pm_nope",
                                        confirm=True)
            results.append(check("an unknown payment method is refused", False, "charged"))
        except stripe.InvalidRequestError as e:
            results.append(check("an unknown payment method is refused (resource_missing)",
                                 e.code == "resource_missing", e.code))

        unconfirmed = stripe.PaymentIntent.create(amount=1000, currency="usd",
                                                  payment_method="pm_card_visa")
        results.append(check("without confirm nothing is charged",
                             unconfirmed.status == "requires_confirmation", unconfirmed.status))

        # Idempotency as Stripe's: a 500 is saved under its key and replayed (the library's own
        # retries, with the same key, get it too); after 24 hours the key is pruned and the
        # same key runs anew.
        import urllib.request
        def emulator(endpoint, **form):
            data = "&".join(f"{k}={v}" for k, v in form.items()).encode()
            urllib.request.urlopen(urllib.request.Request(f"{base}{endpoint}", data=data)).read()
        emulator("/_emulator/fail_next", path="/v1/payment_intents", executed="true")
        answers = []
        for _ in range(2):
            try:
                stripe.PaymentIntent.create(amount=700, currency="usd", payment_method="pm_card_visa",
                                            confirm=True, idempotency_key="py-replay-1")
                answers.append("ok")
            except stripe.APIError as e:
                answers.append(f"{e.http_status}")
        results.append(check("a 500 is saved under its key and replayed", answers == ["500", "500"],
                             answers))
        emulator("/_emulator/clock/advance", seconds=str(24 * 3600 + 1))
        after = stripe.PaymentIntent.create(amount=700, currency="usd", payment_method="pm_card_visa",
                                            confirm=True, idempotency_key="py-replay-1")
        results.append(check("after 24 hours the key is pruned and runs anew",
                             after.status == "succeeded", after.status))

        stripe.api_key = None
        for what, call in [("a list", lambda: stripe.PaymentIntent.list(api_key="")),
                           ("a retrieve", lambda: stripe.PaymentIntent.retrieve(created[0], api_key=""))]:
            try:
                call()
                results.append(check(f"{what} without an API key is refused", False, "answered"))
            except (stripe.AuthenticationError, stripe.APIError) as e:
                results.append(check(f"{what} without an API key is refused",
                                     isinstance(e, stripe.AuthenticationError), type(e).__name__))
    finally:
        proc.kill()
    failed = results.count(False)
    print(f"stripe-python {stripe.VERSION}: {len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
