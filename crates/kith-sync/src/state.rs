//! The merged state: what the account's devices agree on, computed from the
//! set of ops a replica holds.
//!
//! Every field is a join of its ops — a maximum or minimum under a fixed
//! order — so applying ops in any order, any number of times, gives the
//! same state:
//!
//! | what | rule |
//! |---|---|
//! | messages per friend | one per [`MessageId`]; ordered by [`Position`] (Lamport, sender time, ID); if two ops record the same ID differently, the first by [`Op::order`] wins |
//! | edits | latest `at` wins, ties by [`OpId`] |
//! | deletions | final: once deleted, a message stays deleted whatever the edits; the earliest deletion is kept |
//! | contacts | last writer wins between add and remove, by [`Op::order`] |
//! | request decisions | last writer wins per requester |
//! | read marker per friend | the highest [`Position`] read; never moves back |
//! | profile name, nospam | last writer wins |
//!
//! Edits, deletions and read markers may arrive before the message they
//! name; they are kept and take effect when it arrives.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use kith_proto::Nospam;
use kith_proto::wire::{ChatMessage, MessageId, Timestamp};

use crate::op::{Decision, Op, OpId, OpKind, Position, Stamp};

/// A last-writer-wins register: the value of the op highest in
/// [`Op::order`], with that op's stamp and ID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lww<T> {
    /// The winning value.
    pub value: T,
    /// The winning op's stamp.
    pub stamp: Stamp,
    /// The winning op.
    pub op: OpId,
}

impl<T> Lww<T> {
    fn offer(slot: Entry<'_, [u8; 32], Lww<T>>, value: T, op: &Op) {
        match slot {
            Entry::Vacant(v) => {
                v.insert(Lww::of(value, op));
            }
            Entry::Occupied(mut o) => {
                if o.get().order() < op.order() {
                    o.insert(Lww::of(value, op));
                }
            }
        }
    }

    fn offer_option(slot: &mut Option<Lww<T>>, value: T, op: &Op) {
        if slot.as_ref().is_none_or(|cur| cur.order() < op.order()) {
            *slot = Some(Lww::of(value, op));
        }
    }

    fn of(value: T, op: &Op) -> Self {
        Self {
            value,
            stamp: op.stamp,
            op: op.id,
        }
    }

    fn order(&self) -> (Stamp, OpId) {
        (self.stamp, self.op)
    }
}

/// Who wrote a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// This account (any of its devices) sent it.
    Sent,
    /// The friend sent it.
    Received,
}

/// A friend as the account knows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contact {
    /// Their encoded Kith ID.
    pub id_bytes: Vec<u8>,
    /// Their name.
    pub name: String,
    /// Their encoded contact card.
    pub card: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Recorded {
    message: ChatMessage,
    direction: Direction,
    stamp: Stamp,
    op: OpId,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Edit {
    body: String,
    at: Timestamp,
    op: OpId,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Deletion {
    at: Timestamp,
    op: OpId,
}

/// A message as the merged state shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageView<'a> {
    /// The message as first recorded (original text).
    pub message: &'a ChatMessage,
    /// Who wrote it.
    pub direction: Direction,
    /// The text to show: the latest edit's, the original, or empty once
    /// deleted.
    pub body: &'a str,
    /// When the winning edit was made, if edited.
    pub edited_at: Option<Timestamp>,
    /// When it was deleted, if deleted.
    pub deleted_at: Option<Timestamp>,
    /// The op that recorded it.
    pub recorded_by: OpId,
}

impl MessageView<'_> {
    /// Its place in the conversation.
    pub fn position(&self) -> Position {
        Position::of(self.message)
    }
}

/// One conversation: its messages, their edits and deletions, and how far
/// it has been read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Conversation {
    messages: BTreeMap<Position, Recorded>,
    positions: BTreeMap<MessageId, Position>,
    edits: BTreeMap<MessageId, Edit>,
    deletions: BTreeMap<MessageId, Deletion>,
    read_up_to: Option<Position>,
}

impl Conversation {
    /// The messages in conversation order, oldest first.
    pub fn messages(&self) -> impl DoubleEndedIterator<Item = MessageView<'_>> {
        self.messages.values().map(|r| self.view(r))
    }

    /// One message by ID.
    pub fn message(&self, id: &MessageId) -> Option<MessageView<'_>> {
        let position = self.positions.get(id)?;
        self.messages.get(position).map(|r| self.view(r))
    }

    /// Number of messages (deleted ones included).
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether there are no messages (there may still be a read marker, or
    /// edits waiting for their message).
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// The last message read, if any.
    pub fn read_up_to(&self) -> Option<Position> {
        self.read_up_to
    }

    /// Received messages after the read marker, deleted ones left out.
    pub fn unread(&self) -> usize {
        let after = match self.read_up_to {
            Some(marker) => self.messages.range((
                std::ops::Bound::Excluded(marker),
                std::ops::Bound::Unbounded,
            )),
            None => self.messages.range(..),
        };
        after
            .filter(|(_, r)| {
                r.direction == Direction::Received && !self.deletions.contains_key(&r.message.id)
            })
            .count()
    }

    fn view<'a>(&'a self, r: &'a Recorded) -> MessageView<'a> {
        let id = r.message.id;
        let deleted = self.deletions.get(&id);
        let edit = self.edits.get(&id);
        let body = match (deleted, edit) {
            (Some(_), _) => "",
            (None, Some(edit)) => edit.body.as_str(),
            (None, None) => r.message.body.as_str(),
        };
        MessageView {
            message: &r.message,
            direction: r.direction,
            body,
            edited_at: edit.map(|e| e.at),
            deleted_at: deleted.map(|d| d.at),
            recorded_by: r.op,
        }
    }

    fn record(&mut self, message: &ChatMessage, direction: Direction, op: &Op) {
        let position = Position::of(message);
        if let Some(old) = self.positions.get(&message.id) {
            let Some(existing) = self.messages.get(old) else {
                return;
            };
            if (existing.stamp, existing.op) <= op.order() {
                return;
            }
            let old = *old;
            self.messages.remove(&old);
        }
        self.positions.insert(message.id, position);
        self.messages.insert(
            position,
            Recorded {
                message: message.clone(),
                direction,
                stamp: op.stamp,
                op: op.id,
            },
        );
    }

    fn edit(&mut self, target: MessageId, body: &str, at: Timestamp, op: OpId) {
        let edit = Edit {
            body: body.to_owned(),
            at,
            op,
        };
        match self.edits.entry(target) {
            Entry::Vacant(v) => {
                v.insert(edit);
            }
            Entry::Occupied(mut o) => {
                if (o.get().at, o.get().op) < (at, op) {
                    o.insert(edit);
                }
            }
        }
    }

    fn delete(&mut self, target: MessageId, at: Timestamp, op: OpId) {
        let deletion = Deletion { at, op };
        match self.deletions.entry(target) {
            Entry::Vacant(v) => {
                v.insert(deletion);
            }
            Entry::Occupied(mut o) => {
                if (at, op) < (o.get().at, o.get().op) {
                    o.insert(deletion);
                }
            }
        }
    }

    fn read(&mut self, upto: Position) {
        if self.read_up_to.is_none_or(|cur| cur < upto) {
            self.read_up_to = Some(upto);
        }
    }
}

/// Everything the account's devices agree on: a pure function of the set
/// of ops held.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    conversations: BTreeMap<[u8; 32], Conversation>,
    contacts: BTreeMap<[u8; 32], Lww<Option<Contact>>>,
    requests: BTreeMap<[u8; 32], Lww<Decision>>,
    profile_name: Option<Lww<String>>,
    nospam: Option<Lww<Nospam>>,
}

impl State {
    /// The conversation with `friend`, if any op named it.
    pub fn conversation(&self, friend: &[u8; 32]) -> Option<&Conversation> {
        self.conversations.get(friend)
    }

    /// Every conversation, by friend account key.
    pub fn conversations(&self) -> impl Iterator<Item = (&[u8; 32], &Conversation)> {
        self.conversations.iter()
    }

    /// `friend`'s details, if they are a contact now.
    pub fn contact(&self, friend: &[u8; 32]) -> Option<&Contact> {
        self.contacts.get(friend)?.value.as_ref()
    }

    /// Current contacts, by account key.
    pub fn contacts(&self) -> impl Iterator<Item = (&[u8; 32], &Contact)> {
        self.contacts
            .iter()
            .filter_map(|(k, c)| c.value.as_ref().map(|c| (k, c)))
    }

    /// The register behind [`State::contact`]: `None` inside means
    /// removed. Tells when and by which op the contact last changed.
    pub fn contact_entry(&self, friend: &[u8; 32]) -> Option<&Lww<Option<Contact>>> {
        self.contacts.get(friend)
    }

    /// The decision on `from`'s friend request, if one was made.
    pub fn decision(&self, from: &[u8; 32]) -> Option<Decision> {
        self.requests.get(from).map(|r| r.value)
    }

    /// Every decision, by requester.
    pub fn decisions(&self) -> impl Iterator<Item = (&[u8; 32], &Lww<Decision>)> {
        self.requests.iter()
    }

    /// The account's display name, if one was set.
    pub fn profile_name(&self) -> Option<&Lww<String>> {
        self.profile_name.as_ref()
    }

    /// The account's nospam, if one was set.
    pub fn nospam(&self) -> Option<&Lww<Nospam>> {
        self.nospam.as_ref()
    }

    /// Merges one op. The caller ([`crate::Replica`]) applies each op once
    /// and only valid ones, but every rule is idempotent anyway.
    pub(crate) fn apply(&mut self, op: &Op) {
        match &op.kind {
            OpKind::MessageSent { friend, message } => {
                self.conversation_mut(friend)
                    .record(message, Direction::Sent, op);
            }
            OpKind::MessageReceived { friend, message } => {
                self.conversation_mut(friend)
                    .record(message, Direction::Received, op);
            }
            OpKind::Edited {
                friend,
                target,
                body,
                at,
            } => self
                .conversation_mut(friend)
                .edit(*target, body, *at, op.id),
            OpKind::Deleted { friend, target, at } => {
                self.conversation_mut(friend).delete(*target, *at, op.id);
            }
            OpKind::ContactAdded {
                friend,
                id_bytes,
                name,
                card,
            } => {
                let contact = Contact {
                    id_bytes: id_bytes.clone(),
                    name: name.clone(),
                    card: card.clone(),
                };
                Lww::offer(self.contacts.entry(*friend), Some(contact), op);
            }
            OpKind::ContactRemoved { friend } => {
                Lww::offer(self.contacts.entry(*friend), None, op);
            }
            OpKind::RequestDecided { from, decision } => {
                Lww::offer(self.requests.entry(*from), *decision, op);
            }
            OpKind::ReadUpTo { friend, upto } => self.conversation_mut(friend).read(*upto),
            OpKind::ProfileName(name) => {
                Lww::offer_option(&mut self.profile_name, name.clone(), op)
            }
            OpKind::Nospam(nospam) => Lww::offer_option(&mut self.nospam, *nospam, op),
            OpKind::Unknown { .. } => {}
        }
    }

    fn conversation_mut(&mut self, friend: &[u8; 32]) -> &mut Conversation {
        self.conversations.entry(*friend).or_default()
    }
}
