"""The learning benchmark's fresh prompts are in no split of the shipped dataset: nothing in the loop
(SFT, reward models, PPO, the gate's held-out prompts) ever sees them."""

from benchmarks.learning.fresh_prompts import FRESH_PROMPTS, fresh_prompts
from training.text_format import heldout_prompts, load_dataset, train_prompts


def test_fresh_prompts_are_in_no_split_of_the_dataset():
    fresh = fresh_prompts()
    assert len(fresh) == len(set(fresh)) == len(heldout_prompts())
    assert set(FRESH_PROMPTS) == {row["topic"] for row in load_dataset("heldout")}  # one per topic, as held out
    every_prompt = {row["prompt"] for split in ("train", "heldout") for row in load_dataset(split)}
    assert every_prompt == set(train_prompts()) | set(heldout_prompts())
    assert not set(fresh) & every_prompt
    normalised = {p.lower().rstrip(".?!") for p in every_prompt}
    assert not {p.lower().rstrip(".?!") for p in fresh} & normalised
