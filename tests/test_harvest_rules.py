"""The historical import's pure rules (issue 12): merging spellings of one person, role
addresses, the name chosen and when it is split, each skip rule, account policies and the
ranking. No database: the CRM is given as a :class:`Crm`."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from syncd.harvest.decide import Crm, Policy, decide
from syncd.harvest.names import best_name, split_name
from syncd.harvest.people import People, is_role_address, merge_key

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
CRM = Crm(
    internal_domains=frozenset({"northwind.test"}),
    user_addresses=frozenset({"ana@northwind.test", "ana.private@gmail.com"}),
    excluded_addresses=frozenset({"lawyer@firm.test"}),
    excluded_domains=frozenset({"hr-partner.test"}),
    contact_by_address={"carla@acme.test": 7},
    account_by_domain={"acme.test": 3},
)


def test_spellings_of_one_person_merge_and_gmail_folds_only_its_own_domains():
    assert merge_key(" John.Smith+crm@GMAIL.com ") == "johnsmith@gmail.com"
    assert merge_key("j.o.h.n.smith@googlemail.com") == "johnsmith@gmail.com"
    assert merge_key("john.smith+x@acme.test") == "john.smith+x@acme.test"  # not folded
    assert merge_key("Ana@Bücher.Example") == "ana@xn--bcher-kva.example"
    assert merge_key("not an address") == ""
    people = People()
    people.see("received", "John.Smith@gmail.com", "John Smith", T0, "ana")
    people.see("sent", "johnsmith+work@gmail.com", "", T0 + timedelta(days=1), "bob")
    people.see("meeting", "JOHNSMITH@googlemail.com", "J. Smith", T0 - timedelta(days=3), "ana")
    assert len(people) == 1
    john = next(iter(people))
    assert (john.sent, john.received, john.meetings) == (1, 1, 1)
    assert john.mailboxes == {"ana", "bob"}
    assert john.first_seen == T0 - timedelta(days=3) and john.last_seen == T0 + timedelta(days=1)
    assert set(john.spellings) == {
        "john.smith@gmail.com",
        "johnsmith+work@gmail.com",
        "johnsmith@googlemail.com",
    }


@given(st.emails())
def test_the_merge_key_is_stable(address):
    key = merge_key(address)
    assert merge_key(key) == key


def test_role_and_machine_addresses_with_their_tag_variants():
    for address in (
        "noreply@shop.test",
        "no-reply@shop.test",
        "No_Reply@shop.test",
        "MAILER-DAEMON@mx.test",
        "postmaster@acme.test",
        "notifications@github.test",
        "bounces+12345-abc@mail.shop.test",
        "noreply+tag@shop.test",
        "no-reply-7f3a@accounts.test",
        "bounce-mc.us5_1234.567@mail.test",
    ):
        assert is_role_address(address), address
    for address in ("carla@acme.test", "noreen@acme.test", "bouncer.bob@club.test"):
        assert not is_role_address(address), address


def test_the_name_seen_most_often_and_split_only_where_it_is_safe():
    names = Counter({"carla@acme.test": 5, "Carla Diaz": 3, "C. Díaz (Acme)": 2})
    assert best_name(names, "carla@acme.test") == "Carla Diaz"
    assert best_name(Counter({"carla": 4}), "carla@acme.test") == ""  # the local part
    assert best_name(Counter({"Ben": 1}), "ben@northwind.test") == "Ben"
    assert best_name(Counter({"'John  Smith'": 1}), "js@x.test") == "John Smith"
    assert split_name("John Smith") == ("John", "Smith")
    assert split_name("SMITH, JOHN") == ("John", "Smith")
    assert split_name("Díaz, Carla") == ("Carla", "Díaz")
    assert split_name("Jean-Luc O'Neil") == ("Jean-Luc", "O'Neil")
    for unsafe in (
        "Anna Maria van der Berg",
        "Dr. Anna Berg",
        "Sales Team Acme",
        "Madonna",
        "山田太郎",
        "Berg, Anna Maria",
        "R2 D2",
    ):
        assert split_name(unsafe) is None, unsafe


def people_seen() -> People:
    p = People()
    # a two-way conversation at an existing account
    p.see("sent", "dan@acme.test", "Dan Ng", T0, "ana")
    p.see("received", "dan@acme.test", "Dan Ng", T0 + timedelta(hours=1), "ana")
    # written to once: real, whatever --min-messages says
    p.see("sent", "eve@globex.test", "Eve Li", T0 - timedelta(days=40), "ana")
    # wrote once, never answered: a one-off stranger under --min-messages 2
    p.see("received", "stranger@spam.test", "Who", T0, "ana")
    # wrote twice: over the threshold
    for d in (1, 2):
        p.see("received", "fay@initech.test", "Fay", T0 - timedelta(days=d), "ana")
    # only bulk mail, only auto-replies
    p.see("received", "news@shop.test", "Shop", T0, "ana", bulk=True)
    p.see("received", "away@acme.test", "Away", T0, "ana", auto=True)
    # internal, a user's own other address, a role address, the exclusion lists
    p.see("sent", "bob@northwind.test", "Bob", T0, "ana")
    p.see("sent", "ana.private@gmail.com", "Ana", T0, "ana")
    p.see("received", "noreply@acme.test", "", T0, "ana")
    p.see("sent", "lawyer@firm.test", "Law", T0, "ana")
    p.see("sent", "kim@eu.hr-partner.test", "Kim", T0, "ana")
    # free mail, met in a meeting; an existing contact
    p.see("meeting", "gus@gmail.com", "Gus Roe", T0, "ana")
    p.see("received", "carla@acme.test", "CARLA", T0, "ana")
    return p


def test_each_skip_rule_with_its_reason():
    verdicts = {v.person.key: v for v in decide(people_seen(), Policy(), CRM)}
    reasons = {k: v.reason for k, v in verdicts.items() if v.action == "skip"}
    assert reasons == {
        "stranger@spam.test": "one-off stranger",
        "news@shop.test": "bulk only",
        "away@acme.test": "auto-reply only",
        "bob@northwind.test": "internal",
        "anaprivate@gmail.com": "internal",
        "noreply@acme.test": "role address",
        "lawyer@firm.test": "excluded",
        "kim@eu.hr-partner.test": "excluded",
    }
    assert {k for k, v in verdicts.items() if v.action == "import"} == {
        "dan@acme.test",
        "eve@globex.test",
        "fay@initech.test",
        "gus@gmail.com",
    }
    carla = verdicts["carla@acme.test"]
    assert carla.action == "update" and carla.contact_id == 7
    two_way = decide(people_seen(), Policy(two_way_only=True), CRM)
    assert {v.person.key for v in two_way if v.action == "import"} == {"dan@acme.test"}
    assert {v.person.key: v.reason for v in two_way}["gus@gmail.com"] == "one-way"
    loose = {
        v.person.key
        for v in decide(people_seen(), Policy(min_messages=1), CRM)
        if v.action == "import"
    }
    assert "stranger@spam.test" in loose


def test_each_account_policy():
    people = people_seen()
    by = {
        policy: {v.person.key: v for v in decide(people, Policy(accounts=policy), CRM)}
        for policy in ("create", "existing", "never")
    }
    create, existing, never = by["create"], by["existing"], by["never"]
    assert (create["dan@acme.test"].account_id, create["dan@acme.test"].new_account) == (3, False)
    assert (
        create["eve@globex.test"].domain == "globex.test" and create["eve@globex.test"].new_account
    )
    assert create["gus@gmail.com"].domain is None  # free mail: no account
    assert existing["dan@acme.test"].account_id == 3
    assert (
        existing["eve@globex.test"].domain is None and not existing["eve@globex.test"].new_account
    )
    assert never["dan@acme.test"].domain is None and never["dan@acme.test"].account_id is None


def test_two_way_conversations_rank_first_then_recency_then_volume():
    keys = [v.person.key for v in decide(people_seen(), Policy(), CRM) if v.action == "import"]
    assert keys == ["dan@acme.test", "gus@gmail.com", "fay@initech.test", "eve@globex.test"]


def test_a_saved_card_makes_someone_known_and_names_them_in_the_users_words():
    from syncd.connectors.contacts import card
    from syncd.harvest.collect import see_card

    people = People()
    people.see("received", "vic@umbrella.test", "VIC", T0, "ana")  # once: a stranger...
    saved = card(
        "c1", "Dr. Victoria Lang", ["Vic@Umbrella.test", "ana@northwind.test"], "Victoria", "Lang"
    )
    assert saved is not None
    see_card(people, saved, "ana", {"ana@northwind.test"})  # ... but Ana saved her
    (vic,) = decide(people, Policy(), CRM)
    assert (vic.action, vic.name, vic.first_last) == (
        "import",
        "Dr. Victoria Lang",
        ("Victoria", "Lang"),
    )
    assert vic.person.saved == 1 and vic.person.first_seen == T0  # a card has no date
    assert len(people) == 1  # the user's own address on the card is not a person
    only_saved = People()
    see_card(only_saved, saved, "ana", {"ana@northwind.test"})
    (v,) = decide(only_saved, Policy(two_way_only=True), CRM)
    assert v.action == "import" and v.person.first_seen is None


def test_two_address_books_naming_one_person_differently_give_one_name_in_any_order():
    from syncd.connectors.contacts import card
    from syncd.harvest.collect import see_card

    one = card("a", "Vic Lang", ["vic@umbrella.test"], "Vic", "Lang")
    two = card("b", "Victoria Lang", ["vic@umbrella.test"], "Victoria", "Lang")
    assert one is not None and two is not None
    names = set()
    for cards in ((one, two), (two, one)):
        people = People()
        for c in cards:
            see_card(people, c, "ana", set())
        (v,) = decide(people, Policy(), CRM)
        names.add((v.name, v.first_last))
    assert names == {("Vic Lang", ("Vic", "Lang"))}


def test_a_person_s_address_does_not_depend_on_the_order_the_mail_was_read():
    sightings = [
        ("received", "John.Smith@gmail.com", T0),
        ("sent", "johnsmith@googlemail.com", T0 + timedelta(days=1)),
    ]
    chosen = set()
    for order in (sightings, sightings[::-1]):
        people = People()
        for seen, address, when in order:
            people.see(seen, address, "John", when, "ana")  # type: ignore[arg-type]
        chosen.add(next(iter(people)).address)
    assert chosen == {"john.smith@gmail.com"}  # a tie: the smallest spelling, read either way


def test_cards_chained_by_shared_addresses_are_one_person_in_any_order():
    from itertools import permutations

    from syncd.connectors.contacts import card
    from syncd.harvest.collect import see_card

    chain = [
        card("a", "Vic Lang", ["vic@umbrella.test", "v.lang@gmail.com"]),
        card("b", "Victoria Lang", ["v.lang@gmail.com", "victoria@lang.test"]),
        card("c", "V. Lang", ["victoria@lang.test", "vl@hooli.test"]),
    ]
    found = set()
    for order in permutations(chain):
        people = People()
        people.see("received", "vl@hooli.test", "Vic", T0, "ana")
        for c in order:
            assert c is not None
            see_card(people, c, "ana", set())
        people.join_linked()
        (vic,) = list(people)  # three cards, two steps apart: one person
        assert vic.saved == 3 and vic.received == 1
        found.add((vic.key, tuple(sorted(vic.spellings.items()))))
    assert len(found) == 1
