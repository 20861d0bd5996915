"""Generate ``support_sft.jsonl``: the shipped customer-support SFT dataset.

Deterministic: the same templates and seed always give the same file.
Run ``python training/data/make_dataset.py`` to regenerate it in place.

Each topic has several user phrasings; one phrasing per topic (~20%) is held
out (``split == "heldout"``) and must never be used for training.  Every
prompt gets responses in four styles of deliberately mixed quality:
``terse``, ``empathetic`` (with varying completeness), ``unhelpful`` and
``clarifying``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 1234
PER_STYLE = 3  # responses per style per prompt
OUT = Path(__file__).with_name("support_sft.jsonl")

# topic -> phrasings, steps (imperative clauses), followups ("if ..." clauses),
#          terse answers, clarifying questions, topic-specific unhelpful replies
TOPICS: dict[str, dict[str, list[str]]] = {
    "order_not_arrived": dict(
        phrasings=["My order hasn't arrived. What should I do?", "My package never showed up.",
                   "Where is my order? It still isn't here.", "I ordered something a week ago and it hasn't come.",
                   "My parcel is missing, can you help?"],
        steps=["check the tracking link in your email", "ask your neighbours"],
        followups=["if it hasn't arrived in two days, reply here and I'll open a claim for you"],
        terse=["Check your tracking number.", "Use the tracking link in your email.", "Wait two more days, then contact us."],
        clarify=["Could you share your order number so I can look into it?", "When did you place the order?",
                 "Which address was the order shipped to?"],
        unhelpful=["Orders arrive when they arrive."]),
    "refund": dict(
        phrasings=["I want a refund.", "How do I get my money back?", "Can I get a refund for my purchase?",
                   "I'd like to request a refund, please.", "Please refund my order."],
        steps=["open your order history and choose request refund", "select the items you want refunded"],
        followups=["if you paid by card, the money should be back within five business days"],
        terse=["Request it from your order history.", "Refunds take five business days.", "Use the refund button on your order."],
        clarify=["Could you tell me which order you want refunded?", "Is the refund for the whole order or one item?",
                 "Have you already sent the item back?"],
        unhelpful=["Refunds are not our problem."]),
    "damaged_item": dict(
        phrasings=["My item arrived damaged.", "The product I received is broken.", "The box was crushed and the item inside is cracked.",
                   "What can I do about a damaged delivery?", "I got a broken item in my order."],
        steps=["take a photo of the damage and the packaging", "upload the photos from your order page"],
        followups=["once we have the photos, we will send a free replacement"],
        terse=["Send us a photo of the damage.", "We will replace it.", "Upload photos on your order page."],
        clarify=["Could you send a photo of the damaged item?", "Is the item unusable or only scratched?",
                 "Would you prefer a replacement or a refund?"],
        unhelpful=["Things break sometimes."]),
    "password_reset": dict(
        phrasings=["I forgot my password.", "How do I reset my password?", "I can't remember my password, help.",
                   "My password doesn't work anymore.", "Please help me change my password."],
        steps=["click forgot password on the login page", "follow the link we email you"],
        followups=["if the email doesn't arrive, check your spam folder"],
        terse=["Click forgot password on the login page.", "Use the reset link.", "Reset it from the login page."],
        clarify=["Which email address is your account registered with?", "Are you logging in on the app or the website?",
                 "Did you already try the forgot password link?"],
        unhelpful=["Just remember it next time."]),
    "account_locked": dict(
        phrasings=["My account is locked.", "I can't log in, it says my account is locked.", "Why was my account locked?",
                   "How do I unlock my account?", "I got locked out of my account."],
        steps=["wait thirty minutes before trying again", "reset your password from the login page"],
        followups=["if it is still locked, reply here and I'll unlock it for you"],
        terse=["Wait thirty minutes and try again.", "Reset your password.", "It unlocks after thirty minutes."],
        clarify=["Could you tell me the email on the account?", "Did you see an error message when it locked?",
                 "When did you last log in successfully?"],
        unhelpful=["Locked accounts stay locked."]),
    "cancel_subscription": dict(
        phrasings=["I want to cancel my subscription.", "How do I cancel my plan?", "Please stop my monthly subscription.",
                   "Can I cancel my membership?", "I don't want to be billed anymore, how do I cancel?"],
        steps=["go to account settings and open subscriptions", "choose cancel subscription and confirm"],
        followups=["you will keep access until the end of the current billing period"],
        terse=["Cancel it in account settings.", "Go to subscriptions and press cancel.", "Use the cancel button in settings."],
        clarify=["Which subscription would you like to cancel?", "Do you want to cancel now or at the end of the month?",
                 "Could you confirm the email on your account?"],
        unhelpful=["Subscriptions cannot be changed."]),
    "double_charge": dict(
        phrasings=["I was charged twice for the same order.", "There are two charges on my card.", "Why did you bill me twice?",
                   "My card shows a double charge.", "I see a duplicate payment on my statement."],
        steps=["check if one charge is only pending", "send us the last four digits of the card"],
        followups=["if both are final, I'll refund the extra one"],
        terse=["One charge is probably pending.", "The extra charge will drop off.", "Check your statement in three days."],
        clarify=["Could you share the date and amount of both charges?", "Are both charges final or is one pending?",
                 "Which card was charged?"],
        unhelpful=["Talk to your bank."]),
    "change_address": dict(
        phrasings=["I need to change my shipping address.", "Can I update the delivery address on my order?",
                   "I moved, how do I change my address?", "I entered the wrong address for my order.",
                   "Please ship my order to a different address."],
        steps=["open the order and choose edit address", "enter the new address and save"],
        followups=["if the order has already shipped, I can ask the courier to redirect it"],
        terse=["Edit it on the order page.", "Change it before the order ships.", "Update it under edit address."],
        clarify=["Has the order already shipped?", "Could you share the order number and the new address?",
                 "Is this for one order or for your account?"],
        unhelpful=["Addresses can't be changed."]),
    "late_delivery": dict(
        phrasings=["My delivery is late.", "The delivery date has passed.", "Why is my package so late?",
                   "My order was supposed to come yesterday.", "The courier is late again."],
        steps=["check the latest estimate on the tracking page", "make sure someone can receive the parcel"],
        followups=["if it is more than three days late, I'll send you a discount code"],
        terse=["Check the tracking page.", "It should arrive soon.", "Couriers are busy this week."],
        clarify=["Could you share your order number?", "What delivery date were you given?",
                 "Which courier is delivering it?"],
        unhelpful=["Please wait."]),
    "wrong_item": dict(
        phrasings=["I received the wrong item.", "You sent me the wrong product.", "This isn't what I ordered.",
                   "The size in my package is wrong.", "I got someone else's order."],
        steps=["start a return from your order page", "keep the item in its original packaging"],
        followups=["once the return is scanned, we will ship the right item"],
        terse=["Start a return.", "We will send the right item.", "Return it from your order page."],
        clarify=["What item did you receive instead?", "Could you share the order number?",
                 "Would you like the correct item or a refund?"],
        unhelpful=["Keep it, then."]),
    "app_crash": dict(
        phrasings=["The app keeps crashing.", "Your app crashes when I open it.", "The app closes every time I log in.",
                   "Why does the app crash on my phone?", "I can't use the app, it keeps freezing."],
        steps=["update the app to the latest version", "restart your phone"],
        followups=["if it still crashes, send us your phone model"],
        terse=["Update the app.", "Reinstall the app.", "Restart your phone."],
        clarify=["Which phone and app version are you using?", "Does it crash at a specific screen?",
                 "When did the crashes start?"],
        unhelpful=["It works for us."]),
    "return_item": dict(
        phrasings=["How do I return an item?", "I want to send something back.", "What is your return policy?",
                   "Can I return a product I don't like?", "I'd like to return my purchase."],
        steps=["start a return from your order history", "print the free return label"],
        followups=["you have thirty days from delivery to send it back"],
        terse=["Start a return from your orders.", "Returns are free for thirty days.", "Print the return label."],
        clarify=["Which item would you like to return?", "When was the item delivered?",
                 "Is the item unused and in its packaging?"],
        unhelpful=["Returns are complicated."]),
    "update_payment": dict(
        phrasings=["How do I update my card details?", "My card expired, how do I change it?", "I want to use a different payment method.",
                   "Can I change the card on my account?", "My payment keeps failing."],
        steps=["go to account settings and open payment methods", "add the new card and set it as default"],
        followups=["if a payment failed, we will retry it within a day"],
        terse=["Update it under payment methods.", "Add a new card in settings.", "Set the new card as default."],
        clarify=["Is this for a subscription or a single order?", "What error do you see when paying?",
                 "Which payment method would you like to use?"],
        unhelpful=["Use a card that works."]),
    "promo_code": dict(
        phrasings=["My promo code doesn't work.", "The discount code was rejected.", "Why can't I use my coupon?",
                   "The voucher says it's invalid.", "My discount wasn't applied."],
        steps=["check the expiry date and the minimum order amount", "type the code without spaces"],
        followups=["if it should be valid, send me the code and I'll apply the discount manually"],
        terse=["Check the expiry date.", "The code may have expired.", "Type it without spaces."],
        clarify=["Could you share the code you are using?", "What message do you see when you apply it?",
                 "Where did you get the code?"],
        unhelpful=["Codes don't always work."]),
    "delete_account": dict(
        phrasings=["Please delete my account.", "How do I close my account?", "I want all my data removed.",
                   "Can you remove my account permanently?", "I'd like to delete my profile."],
        steps=["go to account settings and choose delete account", "confirm with the link we email you"],
        followups=["your data is removed within thirty days"],
        terse=["Delete it in account settings.", "Use delete account in settings.", "Confirm the email we send."],
        clarify=["Could you confirm the email on the account?", "Do you also want to cancel your subscription?",
                 "Would you like a copy of your data first?"],
        unhelpful=["We keep all accounts."]),
    "missing_item": dict(
        phrasings=["An item is missing from my order.", "My package was incomplete.", "I only got part of my order.",
                   "One product wasn't in the box.", "Something is missing from my delivery."],
        steps=["check if the order was split into two parcels", "look at the packing slip"],
        followups=["if it wasn't shipped separately, I'll send it again for free"],
        terse=["It may ship separately.", "Check your packing slip.", "Look for a second parcel."],
        clarify=["Which item is missing?", "Could you share your order number?",
                 "Did the packing slip list the missing item?"],
        unhelpful=["Everything was sent."]),
    "verification_email": dict(
        phrasings=["I didn't get the verification email.", "The confirmation email never came.", "Where is my sign up email?",
                   "I can't verify my account, no email arrived.", "Your activation email isn't in my inbox."],
        steps=["check your spam and promotions folders", "press resend email on the login page"],
        followups=["if nothing arrives within ten minutes, reply here and I'll verify you manually"],
        terse=["Check your spam folder.", "Press resend email.", "Wait a few minutes."],
        clarify=["Which email address did you sign up with?", "When did you create the account?",
                 "Did you try the resend button?"],
        unhelpful=["Emails get lost."]),
    "change_order": dict(
        phrasings=["Can I change my order?", "I want to add an item to my order.", "I picked the wrong colour, can I change it?",
                   "How do I modify an order I just placed?", "I need to edit my order."],
        steps=["open the order and choose edit order", "change the items before it ships"],
        followups=["if it has already shipped, you can return the item instead"],
        terse=["Edit it before it ships.", "Use edit order.", "Changes are possible for one hour."],
        clarify=["What would you like to change?", "Could you share the order number?",
                 "Has the order already shipped?"],
        unhelpful=["Orders are final."]),
    "invoice": dict(
        phrasings=["I need an invoice for my order.", "Where can I download my receipt?", "Can you send me a VAT invoice?",
                   "How do I get a receipt?", "My company needs an invoice."],
        steps=["open your order history and press download invoice", "add your company details in account settings"],
        followups=["new invoices include your company details automatically"],
        terse=["Download it from your orders.", "Invoices are in your order history.", "Press download invoice."],
        clarify=["Which order do you need the invoice for?", "Do you need your company name on it?",
                 "Should I email it to you?"],
        unhelpful=["We don't do invoices."]),
    "lost_2fa_phone": dict(
        phrasings=["I lost my phone and can't log in.", "My two factor code isn't working.", "I changed phones and lost my authenticator.",
                   "How do I log in without my security code?", "I can't get my login code anymore."],
        steps=["use one of your backup codes to log in", "set up the authenticator on your new phone"],
        followups=["if you have no backup codes, I can verify your identity and reset it"],
        terse=["Use a backup code.", "Log in with a backup code.", "Reset two factor in settings."],
        clarify=["Do you still have your backup codes?", "Which email is on the account?",
                 "Do you still have the old phone number?"],
        unhelpful=["Security is your responsibility."]),
}

APOLOGIES = ["I'm sorry to hear that.", "I'm sorry about the trouble.", "I understand how frustrating this is.",
             "Sorry for the inconvenience.", "I'm sorry this happened."]
OFFERS = ["I'm here if you need further help.", "Let me know if there's anything else I can do.",
          "Feel free to reply if you need more help.", "I'm happy to help further if needed."]
UNHELPFUL = ["We can't help with that.", "Please wait.", "That's not something we handle.", "Try again later.",
             "There's nothing we can do.", "Please contact someone else.", "I don't know.", "That's how it is."]
CLARIFY_PREFIXES = ["", "", "Sure. ", "Happy to look into it. "]


def _cap(s: str) -> str:
    """Capitalise the first character of ``s``."""
    return s[:1].upper() + s[1:]


def empathetic(rng: random.Random, t: dict[str, list[str]]) -> str:
    """An empathetic reply whose completeness varies (apology, 1-3 actions, offer)."""
    n_steps = rng.choice([1, 1, 2])
    steps = t["steps"][:n_steps] if n_steps > 1 else [rng.choice(t["steps"])]
    followup = rng.random() < 0.5
    parts = []
    if rng.random() < 0.75:
        parts.append(rng.choice(APOLOGIES))
    parts.append("Please " + ", and ".join(steps) + ".")
    if followup:
        parts.append(_cap(rng.choice(t["followups"])) + ".")
    if rng.random() < 0.6:
        parts.append(rng.choice(OFFERS))
    return " ".join(parts)


def responses_for(rng: random.Random, t: dict[str, list[str]], style: str, k: int) -> list[str]:
    """``k`` distinct responses of one ``style`` for a topic."""
    if style == "terse":
        return rng.sample(t["terse"], k)
    if style == "clarifying":
        return [rng.choice(CLARIFY_PREFIXES) + q for q in rng.sample(t["clarify"], k)]
    if style == "unhelpful":
        return rng.sample(t["unhelpful"] + UNHELPFUL, k)
    out: list[str] = []
    while len(out) < k:
        r = empathetic(rng, t)
        if r not in out:
            out.append(r)
    return out


def build_rows(seed: int = SEED) -> list[dict[str, str]]:
    """All dataset rows, in a deterministic order."""
    rng = random.Random(seed)
    rows = []
    for topic, t in TOPICS.items():
        heldout_idx = rng.randrange(1, len(t["phrasings"]))  # phrasing 0 always trains
        for i, prompt in enumerate(t["phrasings"]):
            split = "heldout" if i == heldout_idx else "train"
            for style in ("terse", "empathetic", "unhelpful", "clarifying"):
                for resp in responses_for(rng, t, style, PER_STYLE):
                    rows.append(dict(prompt=prompt, response=resp, style=style, topic=topic, split=split))
    return rows


def main() -> None:
    """Write the JSONL next to this script."""
    rows = build_rows()
    with OUT.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} rows to {OUT}")


if __name__ == "__main__":
    main()
