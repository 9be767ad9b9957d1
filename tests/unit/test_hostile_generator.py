"""The hostile-input generator (tests/hostile): reproducible from its seed, every category
made, every tag cbor2 decodes covered, large cases within the batch's budget."""

from __future__ import annotations

import random

import pytest

from firmware.abi import wellformed, wire
from tests.hostile.generator import (CATEGORIES, DECODED_TAGS, MIB, NOT_FUZZED, TAGGED,
                                     Generator)


@pytest.mark.parametrize("category", CATEGORIES)
def test_the_same_seed_makes_the_same_cases(category: str) -> None:
    first, again = Generator(5), Generator(5)
    assert [c.data for c in first.cases(category, 60)] == [c.data for c in again.cases(
        category, 60)]
    assert [c.data for c in Generator(6).cases(category, 60)] != [
        c.data for c in Generator(5).cases(category, 60)]


@pytest.mark.parametrize("category", CATEGORIES)
def test_a_batch_keeps_to_its_budget_of_large_cases(category: str) -> None:
    cases = Generator(7, big_budget=8 * MIB).cases(category, 200)
    assert all(case.category == category and case.frames >= 1 for case in cases)
    large = sum(len(case.data) for case in cases if len(case.data) >= MIB)
    assert large <= 8 * MIB


def test_every_tag_cbor2_decodes_has_hostile_cases() -> None:
    made = {maker(random.Random(1))[0] for maker in TAGGED}
    assert set(DECODED_TAGS) <= made


def test_the_plain_channel_never_gets_hello_or_poweroff() -> None:
    generator = Generator(3)
    names = set()
    for category in ("mutated", "ops"):
        decoder = wire.FrameDecoder(limits=wellformed.INBOUND)
        for case in generator.cases(category, 400):
            for item in decoder.feed(case.data):
                if isinstance(item, wire.Frame) and isinstance(item.payload, dict):
                    names.add(repr(item.payload.get("op")))
            decoder.feed(wire.BREAK)
    assert len(names) > 10 and not names & {repr(str(op)) for op in NOT_FUZZED}
    generator.in_session = True
    assert "hello" in generator.fuzzed_ops() and "poweroff" not in generator.fuzzed_ops()
