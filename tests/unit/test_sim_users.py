"""Simulated users of the learning benchmark: one user_id each, adversarial users reverse the
annotator's verdict, the spammer's request is the opposite of the annotator's noiseless verdict."""

from __future__ import annotations

import random
from collections import Counter

from benchmarks.learning.annotators import EmpatheticAnnotator
from benchmarks.learning.harness import FeedbackCounts, _feedback_request
from benchmarks.learning.users import Crowd, opposite_request
from rlhf.v1 import policy_pb2

PROMPT = "My order hasn't arrived. What should I do?"
GOOD = "I'm sorry to hear that. Please check your tracking number, and if you need further help, I'm here."
BAD = "We can't help with that."


def cands(*texts: str) -> list[policy_pb2.Candidate]:
    return [policy_pb2.Candidate(response_id=f"r{i}", text=t) for i, t in enumerate(texts)]


def test_crowd_ids_and_adversarial_share():
    crowd = Crowd("sim-x", users=12, adversarial_fraction=0.25)
    assert len(set(crowd.user_ids)) == 12 and crowd.adversarial_ids == crowd.user_ids[:3]
    assert crowd.spammer_id not in crowd.user_ids
    picks = [crowd.pick(random.Random(i)) for i in range(600)]
    assert {u for u, against in picks if against} == set(crowd.adversarial_ids)
    assert 0.15 < sum(against for _, against in picks) / len(picks) < 0.35
    assert len(Counter(u for u, _ in picks)) == 12


def test_adversarial_user_reverses_comparisons_and_ratings():
    ann = EmpatheticAnnotator(noise=0.0)
    for against, chosen in ((False, "r0"), (True, "r1")):
        req = _feedback_request(PROMPT, cands(GOOD, BAD), ann, random.Random(0), 0.0, "u", FeedbackCounts(), against)
        assert req.comparison.chosen_response_id == chosen and req.user_id == "u"
    counts = FeedbackCounts()
    honest = _feedback_request(PROMPT, cands(GOOD), ann, random.Random(0), 0.0, "u", counts)
    reversed_ = _feedback_request(PROMPT, cands(GOOD), ann, random.Random(0), 0.0, "u", counts, against=True)
    assert honest.rating.thumbs_up and not reversed_.rating.thumbs_up and counts.ratings == 2  # one candidate: a rating


def test_spammer_votes_the_opposite_of_the_annotator():
    ann = EmpatheticAnnotator(noise=0.0)
    assert opposite_request(PROMPT, cands(GOOD, BAD), ann, thumbs_only=False).comparison.chosen_response_id == "r1"
    assert not opposite_request(PROMPT, cands(GOOD), ann, thumbs_only=True).rating.thumbs_up
    assert opposite_request(PROMPT, cands(BAD, GOOD), ann, thumbs_only=True).rating.thumbs_up
