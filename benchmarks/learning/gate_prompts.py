"""Prompts for the promotion gate only: the learning benchmark's `--gate-prompts N` hands the gate more of them.

The gate's win-rate bound resamples prompts, so its power grows with the number of prompts it judges on, and
the shipped dataset holds out only 20 (one phrasing per topic). These are two more phrasings per topic of the
shipped dataset, in neither of its splits and not among the fresh prompts (benchmarks/learning/fresh_prompts.py,
which stay unseen by every part of the loop). The benchmark writes them to the file that
`RLHF_GATE_PROMPTS_FILE` names: the gate judges on them beside the held-out prompts, and PPO never samples them.
The benchmark's headline win rate stays on the 20 held-out prompts, so runs with and without them compare.
"""

from __future__ import annotations

GATE_PROMPTS: dict[str, tuple[str, str]] = {  # topic of the shipped dataset -> two phrasings in no split
    "order_not_arrived": ("Nothing has come yet and I ordered ages ago.", "I am still waiting for my order."),
    "refund": ("I would like my money back for this.", "Can you pay me back for the order?"),
    "damaged_item": ("What I ordered is smashed.", "The item was broken when I opened the box."),
    "password_reset": ("I can not get into my account, I lost the password.", "Help, I need to reset the password."),
    "account_locked": ("My account got locked, what now?", "I am locked out of my account."),
    "cancel_subscription": ("I do not want the subscription any more.", "Please cancel my plan."),
    "double_charge": ("My card was billed two times.", "I paid twice for one order."),
    "change_address": ("I moved, can the order go to my new address?", "Please change where my order is shipped."),
    "late_delivery": ("My delivery still has not come and it is late.", "The parcel is overdue."),
    "wrong_item": ("I got a different item than the one I ordered.", "The order has the wrong product in it."),
    "app_crash": ("The app keeps closing on me.", "Every time I open the app it crashes."),
    "return_item": ("Can I return this item?", "How do I send back my order?"),
    "update_payment": ("I need to change the card on my account.", "How can I pay with another card?"),
    "promo_code": ("The promo code gives me an error.", "My discount code does not apply."),
    "delete_account": ("I want to delete my account.", "Please close my account for good."),
    "missing_item": ("My order came without one of the items.", "Something is missing from my parcel."),
    "verification_email": ("I never got the email to verify my account.", "The verification email did not arrive."),
    "change_order": ("I need to change something in my order.", "Can I edit my order before it ships?"),
    "invoice": ("Please send me the invoice for my order.", "I need a receipt for my order."),
    "lost_2fa_phone": ("I lost the phone with my login codes.", "I can't get the two factor code on my new phone."),
}


def gate_prompts(n: int | None = None) -> list[str]:
    """The first ``n`` gate-only prompts (all 40 when None), one phrasing of every topic before any second one."""
    ordered = [pair[0] for pair in GATE_PROMPTS.values()] + [pair[1] for pair in GATE_PROMPTS.values()]
    return ordered[:n]
