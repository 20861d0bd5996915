"""Prompts no part of the loop ever sees: the learning benchmark's second evaluation set.

The promotion gate judges candidates on the dataset's held-out prompts (`training.text_format.heldout_prompts`),
and the benchmark's headline win rate is measured on the same 20 prompts, so a candidate the gate picked because
it looked good there is also scored there: the figure can flatter. These phrasings, one per topic of the shipped
dataset (same topics, new wording), are in neither split: SFT, the reward models, PPO and the gate never see them.
The benchmark reports the served version's win rate on them beside the held-out one.
"""

from __future__ import annotations

FRESH_PROMPTS: dict[str, str] = {  # topic of the shipped dataset -> a phrasing of it in no split
    "order_not_arrived": "It has been ten days and nothing was delivered.",
    "refund": "Could you return the money I paid for this order?",
    "damaged_item": "The thing I bought came with a big crack in it.",
    "password_reset": "I need a new password, the old one is not accepted.",
    "account_locked": "It says my account is blocked after too many tries.",
    "cancel_subscription": "How can I end my subscription?",
    "double_charge": "You took the payment for my order two times.",
    "change_address": "The shipping address on my order is wrong, can I fix it?",
    "late_delivery": "My parcel should have been here three days ago.",
    "wrong_item": "The item in the box is not the one I picked.",
    "app_crash": "The app shuts down as soon as it starts.",
    "return_item": "I would like to send back an item I bought.",
    "update_payment": "I have a new card, how do I add it to my account?",
    "promo_code": "The coupon I have is not working at checkout.",
    "delete_account": "Please remove my account and my data.",
    "missing_item": "Two of the items I ordered were not in the parcel.",
    "verification_email": "I signed up but no email came to confirm it.",
    "change_order": "I want to swap an item in the order I just made.",
    "invoice": "Can I have a receipt for my last purchase?",
    "lost_2fa_phone": "I got a new phone and now I can't get my login code.",
}


def fresh_prompts() -> list[str]:
    """The benchmark-only evaluation prompts (in no split of the dataset)."""
    return list(FRESH_PROMPTS.values())
