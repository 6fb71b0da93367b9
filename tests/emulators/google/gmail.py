"""Gmail API v1: labels, messages and history of each mailbox, seeded from RFC 5322 messages.

Every change gets the next history id of its mailbox (monotonic, per change), as Gmail
assigns them. Messages carry label *ids*, never names: system labels are their own ids
(INBOX, SPAM), user labels are made with :meth:`Gmail.add_label` and get ``Label_<n>``, as
Gmail's do. Label changes (:meth:`Gmail.modify`, what the web interface does when a message
is moved out of Spam, trashed or labelled) are history records with ``labelsAdded`` /
``labelsRemoved``, and ``history.list`` returns only the ``historyTypes`` asked for.
"""

from __future__ import annotations

import base64
import email
import email.policy
import time
from typing import Any

from .state import Call, GmailError, GoogleState, Mailbox, Message

SYSTEM_LABELS = [
    "INBOX",
    "SENT",
    "DRAFT",
    "SPAM",
    "TRASH",
    "UNREAD",
    "STARRED",
    "IMPORTANT",
    "CHAT",
    "CATEGORY_PERSONAL",
    "CATEGORY_SOCIAL",
    "CATEGORY_PROMOTIONS",
    "CATEGORY_UPDATES",
    "CATEGORY_FORUMS",
]  # system labels are their own ids [gmail/api/guides/labels: "Types of labels"]
# historyTypes values [history.list in gmail.v1.json] -> the History field each one fills
# [History schema: messagesAdded, messagesDeleted, labelsAdded, labelsRemoved]
HISTORY_FIELDS = {
    "messageAdded": "messagesAdded",
    "messageDeleted": "messagesDeleted",
    "labelAdded": "labelsAdded",
    "labelRemoved": "labelsRemoved",
}


class Gmail(GoogleState):
    # --- seeding -------------------------------------------------------------------------

    def add_label(self, user: str, name: str) -> str:
        """A user label, as the user makes it in Gmail; returns its id (``Label_<n>``), which
        is what messages carry. System label names are reserved, and names are unique
        [gmail/api/guides/labels: "no USER label can be created with the same name as any
        SYSTEM label"]."""
        with self.lock:
            box = self.add_user(user)
            taken = {n.lower() for n in box.labels.values()} | {n.lower() for n in SYSTEM_LABELS}
            if name.lower() in taken:
                raise ValueError(f"label name {name!r} exists or conflicts")
            label_id = f"Label_{len(box.labels) + 1}"
            box.labels[label_id] = name
            return label_id

    @staticmethod
    def _label_ids(box: Mailbox, labels: tuple[str, ...] | list[str]) -> set[str]:
        for label in labels:
            if label not in SYSTEM_LABELS and label not in box.labels:
                raise ValueError(
                    f"{label!r} is not a label id of {box.email}: messages carry label ids "
                    "(INBOX, SPAM, or the Label_<n> that add_label returns), never names"
                )
        return set(labels)

    def modify(
        self, user: str, message_id: str, add: tuple[str, ...] = (), remove: tuple[str, ...] = ()
    ) -> None:
        """Change a message's labels, as the web interface (or messages.modify) does: "Not
        spam" removes SPAM and adds INBOX, restoring from Trash removes TRASH. Each actual
        change is a history record with ``labelsAdded`` or ``labelsRemoved`` entries
        (message + labelIds) [History, HistoryLabelAdded/Removed in gmail.v1.json]."""
        with self.lock:
            box = self.mailboxes[user]
            m = box.messages[message_id]
            if set(add) & set(remove):
                raise ValueError("a label cannot be added and removed at once")
            added = sorted(self._label_ids(box, add) - m.labels)
            removed = sorted(self._label_ids(box, remove) & m.labels)
            m.labels = (m.labels | set(added)) - set(removed)
            ref = {"id": m.id, "threadId": m.thread_id}
            for key, ids in (("labelsRemoved", removed), ("labelsAdded", added)):
                if ids:
                    box.history_id += 1
                    m.history_id = box.history_id
                    change = {"message": {**ref, "labelIds": sorted(m.labels)}, "labelIds": ids}
                    box.history.append({"id": box.history_id, "messages": [ref], key: [change]})

    def deliver(
        self,
        user: str,
        raw: bytes,
        labels: tuple[str, ...] = ("INBOX", "UNREAD"),
        internal_date_ms: int | None = None,
    ) -> str:
        """A message arrives with ``labels`` (ids: see :meth:`add_label`)."""
        with self.lock:
            box = self.add_user(user)
            self._label_ids(box, labels)
            box.history_id += 1
            msg = email.message_from_bytes(raw, policy=email.policy.compat32)
            refs = (msg.get("References", "") + " " + msg.get("In-Reply-To", "")).split()
            thread = next((box.threads[r] for r in refs if r in box.threads), None)
            mid = format(box.history_id * 7919, "x").rjust(16, "0")
            thread = thread or mid
            if msg.get("Message-ID"):
                box.threads[msg["Message-ID"].strip()] = thread
            when = internal_date_ms or int(time.time() * 1000)
            box.messages[mid] = Message(mid, thread, raw, set(labels), when, box.history_id)
            box.history.append(
                {
                    "id": box.history_id,
                    "messages": [{"id": mid, "threadId": thread}],
                    "messagesAdded": [
                        {"message": {"id": mid, "threadId": thread, "labelIds": sorted(labels)}}
                    ],
                }
            )
            return mid

    def expire_history(self) -> None:
        """Forget the history so far: older startHistoryIds now answer 404."""
        with self.lock:
            for box in self.mailboxes.values():
                box.oldest_history = box.history_id
                box.history.clear()

    # --- methods -------------------------------------------------------------------------

    def _getProfile(self, call: Call) -> dict[str, Any]:
        box = call.box
        return {
            "emailAddress": box.email,
            "messagesTotal": len(box.messages),
            "threadsTotal": len({m.thread_id for m in box.messages.values()}),
            "historyId": str(box.history_id),
        }

    def _labels_list(self, call: Call) -> dict[str, Any]:
        """Each label with only id, name, messageListVisibility, labelListVisibility and type
        [ListLabelsResponse.labels in gmail.v1.json]; a user label's id is not its name."""
        system = [{"id": lab, "name": lab, "type": "system"} for lab in SYSTEM_LABELS]
        user = [
            {
                "id": label_id,
                "name": name,
                "messageListVisibility": "show",
                "labelListVisibility": "labelShow",
                "type": "user",
            }
            for label_id, name in call.box.labels.items()
        ]
        return {"labels": system + user}

    def _messages_list(self, call: Call) -> dict[str, Any]:
        params = call.params
        wanted = set(params.get("labelIds", []))
        hidden = (
            set() if params.get("includeSpamTrash", ["false"])[0] == "true" else {"SPAM", "TRASH"}
        )
        # after:/before: take YYYY/MM/DD or epoch seconds, "dates are interpreted as
        # midnight PST unless specified in seconds" [gmail/api/guides/filtering; operators:
        # support.google.com/mail/answer/7190]; compared with internalDate, in milliseconds
        after, before = 0, None
        for term in params.get("q", [""])[0].split():
            name, _, value = term.partition(":")
            if name in ("after", "before") and value:
                ms = (
                    int(value) * 1000
                    if value.isdigit()
                    else int(time.mktime(time.strptime(value, "%Y/%m/%d")) * 1000)
                )
                after, before = (ms, before) if name == "after" else (after, ms)
        found = sorted(
            (
                m
                for m in call.box.messages.values()
                if wanted <= m.labels
                and not (m.labels & hidden)
                and m.internal_date_ms > after
                and (before is None or m.internal_date_ms < before)
            ),
            key=lambda m: (m.internal_date_ms, m.id),
            reverse=True,
        )  # newest first
        page, next_token = call.page(found, 100, 500)
        out: dict[str, Any] = {"resultSizeEstimate": len(found)}
        if page:
            out["messages"] = [{"id": m.id, "threadId": m.thread_id} for m in page]
        if next_token:
            out["nextPageToken"] = next_token
        return out

    def _messages_get(self, call: Call) -> dict[str, Any]:
        m = call.box.messages.get(call.path["id"])
        if m is None:
            raise GmailError(404, "notFound", "Requested entity was not found.")
        fmt = call.params.get("format", ["full"])[0]
        out: dict[str, Any] = {
            "id": m.id,
            "threadId": m.thread_id,
            "labelIds": sorted(m.labels),
            "historyId": str(m.history_id),
            "internalDate": str(m.internal_date_ms),
            "sizeEstimate": len(m.raw),
        }
        if fmt == "raw":
            out["raw"] = base64.urlsafe_b64encode(m.raw).decode()
        elif fmt in ("metadata", "full"):
            msg = email.message_from_bytes(m.raw, policy=email.policy.compat32)
            names = {h.lower() for h in call.params.get("metadataHeaders", [])}
            headers = [
                {"name": k, "value": str(v)}
                for k, v in msg.items()
                if fmt == "full" or not names or k.lower() in names
            ]
            out["payload"] = {"mimeType": msg.get_content_type(), "headers": headers}
            out["snippet"] = ""
        return out

    def _history_list(self, call: Call) -> dict[str, Any]:
        box, params = call.box, call.params
        if "startHistoryId" not in params:
            raise GmailError(400, "invalidArgument", "Missing required parameter startHistoryId")
        start = int(params["startHistoryId"][0])
        if start < box.oldest_history:
            raise GmailError(404, "notFound", "Requested entity was not found.")
        records = [r for r in box.history if r["id"] > start]
        types = params.get("historyTypes", [])
        unknown = sorted(set(types) - set(HISTORY_FIELDS))
        if unknown:
            raise GmailError(
                400, "invalidArgument", f"Invalid value for historyTypes: {unknown[0]}"
            )
        if types:  # "History types to be returned by the function" [history.list]
            records = [r for r in records if any(HISTORY_FIELDS[t] in r for t in types)]
        page, next_token = call.page(records, 100, 500)
        out: dict[str, Any] = {"historyId": str(box.history_id)}
        if page:
            out["history"] = [{**r, "id": str(r["id"])} for r in page]
        if next_token:
            out["nextPageToken"] = next_token
        return out
