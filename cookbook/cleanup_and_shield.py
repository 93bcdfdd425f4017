"""Cleanup on cancel, and a shielded critical section.

An order workflow: ``place_order`` reserves inventory, then charges the
payment inside ``with shield():`` — a critical section that must never stop
half-way (money taken but not recorded) — and ``send_confirmation`` emails the
customer.

The first order runs to the end. For the second one a support agent cancels
the order from another thread *while the payment gateway is still
answering*. The shield postpones the cancellation: the charge finishes and is
recorded, and ``CancellationError`` is raised at the first checkpoint after
the shield exits. The step catches it, runs its compensating cleanup (refund
the charge, release the reservation) and re-raises, so the run ends
``cancelled`` with the reason recorded and the confirmation step never runs.

The payment gateway and the support agent are simulated by one background
thread, so the story always happens in the same order.

Run it (about one second)::

    python cookbook/cleanup_and_shield.py
"""

from __future__ import annotations

import threading
import time

from threadflow import CancellationError, StepInput, Workflow, get_context, shield

T0 = time.perf_counter()
ledger: list[str] = []
marks: dict[str, float] = {}
charge_requested = threading.Event()  # the step has called the gateway
gateway_replied = threading.Event()  # the gateway has confirmed the charge


def log(tag: str, message: str) -> None:
    """Print ``message`` with a timestamp and remember ``tag`` in the ledger."""
    ledger.append(tag)
    print(f"  [{(time.perf_counter() - T0) * 1000:7.1f} ms] {message}")


def charge_payment(order: dict[str, object]) -> str:
    """Call the (slow) payment gateway and record the charge: all or nothing."""
    ctx = get_context()
    log("charge-start", f"charging {order['amount']} EUR...")
    charge_requested.set()
    # ctx.wait() is a checkpoint, but inside a shield a cancel does not wake it:
    # we keep waiting for the gateway's answer.
    if not ctx.wait(gateway_replied, timeout=5.0):
        raise TimeoutError("the payment gateway did not answer")
    log("charge-done", f"payment charged in full (cancel requested meanwhile: {ctx.cancel_requested})")
    return f"charge-{order['id']}"


def place_order(step_input: StepInput) -> dict[str, object]:
    """Reserve stock, charge (shielded), and undo both if the order is cancelled."""
    order = step_input.input
    ctx = get_context()
    log("reserve", f"reserved {order['quantity']} x {order['sku']}")
    charge_id = None
    try:
        with shield():
            charge_id = charge_payment(order)
        marks["shield_exited"] = time.perf_counter()
        ctx.check_cancellation()  # the first checkpoint after the shield: a pending cancel lands here
        log("placed", "order placed")
        return {"order": order["id"], "charge": charge_id}
    except CancellationError as cancel:
        marks["landed"] = time.perf_counter()
        log("cancel-landed", f"cancel landed: {cancel}")
        if charge_id is not None:
            log("refund", f"cleanup ran: refunded {charge_id}")
        log("release", f"cleanup ran: released reservation of {order['quantity']} x {order['sku']}")
        raise


def send_confirmation(step_input: StepInput) -> str:
    placed = step_input.previous_step_content
    log("confirm", f"confirmation sent for order {placed['order']}")
    return "sent"


workflow = Workflow("order", steps=[place_order, send_confirmation])


def simulate_world(run_id: str, *, cancel: bool) -> None:
    """The gateway answers 0.3 s after the charge request; the support agent may cancel meanwhile."""
    charge_requested.wait()
    time.sleep(0.1)
    if cancel:
        marks["requested"] = time.perf_counter()
        log("cancel-requested", f"support agent cancels {run_id}")
        accepted = workflow.cancel_run(run_id, reason="customer cancelled the order")
        log("cancel-returned", f"cancel_run returned {accepted} at once (the charge is still in flight)")
    time.sleep(0.2)
    gateway_replied.set()


def run_order(order: dict[str, object], *, cancel: bool) -> None:
    ledger.clear()
    marks.clear()
    charge_requested.clear()
    gateway_replied.clear()
    run_id = f"order-{order['id']}"
    world = threading.Thread(target=simulate_world, args=(run_id,), kwargs={"cancel": cancel})
    world.start()
    output = workflow.run(order, run_id=run_id)
    world.join()
    print(f"Status: {output.status.value}")
    print(f"Cause: {output.cause.value if output.cause else None}")
    print(f"Reason: {output.reason}")
    print(f"Stopped in step: {output.step_name}")
    print(f"Ledger: {' -> '.join(ledger)}")
    if cancel:
        waited = (marks["landed"] - marks["requested"]) * 1000
        after_shield = (marks["landed"] - marks["shield_exited"]) * 1000
        print(f"The cancel waited {waited:.0f} ms for the shielded charge, then landed {after_shield:.2f} ms after it.")


def main() -> None:
    print("Order 1001: nobody cancels")
    run_order({"id": 1001, "sku": "KB-42", "quantity": 2, "amount": 59.90}, cancel=False)
    print("\nOrder 1002: cancelled while the payment is being charged")
    run_order({"id": 1002, "sku": "MS-7", "quantity": 1, "amount": 24.50}, cancel=True)


if __name__ == "__main__":
    main()
