//! Conversation history: every chat message kept once, in the order all
//! devices agree on, readable a page at a time.
//!
//! Layout in the store (tree `history`):
//!
//! ```text
//! key   = conversation (16, Store::opaque_id) | lamport (8, BE) | sent_at (8, BE) | message id (16)
//! value = postcard(StoredMessage)
//! ```
//!
//! and tree `history-ids`: `conversation | message id` → the history key,
//! so a message that arrives twice (directly and from a mailbox, or resent
//! after a crash) is recognised and kept once. Sorting by key gives the
//! order of DESIGN.md: Lamport counter, then sender time, then ID — the
//! same on every device that holds the same messages.

use std::ops::Bound;

use kith_proto::wire::{ChatMessage, Lamport, MessageId, Timestamp};
use kith_store::{Direction, Op, Store, StoreError};
use serde::{Deserialize, Serialize};

const HISTORY: &str = "history";
const HISTORY_IDS: &str = "history-ids";
const KEY_LEN: usize = 16 + 8 + 8 + 16;
/// Most messages one page returns.
pub const MAX_PAGE: usize = 500;

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Author {
    /// This account (any of its devices).
    Me,
    /// The friend.
    Friend,
}

/// A message as history keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// The message as sent.
    pub message: ChatMessage,
    /// Who wrote it.
    pub author: Author,
    /// When this device stored it.
    pub stored_at: Timestamp,
}

/// Where a page ends, to ask for the one before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor(Vec<u8>);

/// One page of a conversation, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The messages, oldest first.
    pub messages: Vec<StoredMessage>,
    /// Pass to [`History::page`] for older messages; `None` at the start.
    pub older: Option<Cursor>,
}

/// Why history could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored message does not decode.
    #[error("a stored message is damaged: {0}")]
    Damaged(String),
}

/// Whether an insert stored something new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// Stored.
    New,
    /// Already held; nothing changed.
    Duplicate,
}

/// History over a [`Store`].
#[derive(Debug, Clone, Copy)]
pub struct History<'a> {
    store: &'a Store,
}

fn key(conversation: &[u8; 16], lamport: Lamport, sent_at: Timestamp, id: MessageId) -> Vec<u8> {
    let mut out = Vec::with_capacity(KEY_LEN);
    out.extend_from_slice(conversation);
    out.extend_from_slice(&lamport.0.to_be_bytes());
    out.extend_from_slice(&sent_at.0.to_be_bytes());
    out.extend_from_slice(&id.0);
    out
}

impl<'a> History<'a> {
    /// History kept in `store`.
    pub fn new(store: &'a Store) -> Self {
        Self { store }
    }

    /// The conversation identifier for a friend's account key.
    pub fn conversation(&self, friend_account: &[u8; 32]) -> [u8; 16] {
        self.store.opaque_id("conversation", friend_account)
    }

    /// The ops that store `message` unless it is already held (by ID);
    /// returned rather than applied so the caller can make them part of a
    /// larger atomic, durable batch.
    pub fn insert_ops(
        &self,
        conversation: &[u8; 16],
        message: StoredMessage,
    ) -> Result<(Inserted, Vec<Op>), HistoryError> {
        let id = message.message.id;
        let index = crate::records::message_key(conversation, &id);
        if self.store.get(HISTORY_IDS, &index)?.is_some() {
            return Ok((Inserted::Duplicate, Vec::new()));
        }
        let key = key(
            conversation,
            message.message.lamport,
            message.message.sent_at,
            id,
        );
        let value =
            postcard::to_allocvec(&message).map_err(|e| HistoryError::Damaged(e.to_string()))?;
        Ok((
            Inserted::New,
            vec![
                Op::Put {
                    tree: HISTORY.into(),
                    key: key.clone(),
                    value,
                },
                Op::Put {
                    tree: HISTORY_IDS.into(),
                    key: index,
                    value: key,
                },
            ],
        ))
    }

    /// Stores `message` unless already held, durably.
    pub fn insert(
        &self,
        conversation: &[u8; 16],
        message: StoredMessage,
    ) -> Result<Inserted, HistoryError> {
        let (inserted, ops) = self.insert_ops(conversation, message)?;
        if !ops.is_empty() {
            self.store.apply_durable(ops)?;
        }
        Ok(inserted)
    }

    /// The message with ID `id`, if held.
    pub fn get(
        &self,
        conversation: &[u8; 16],
        id: MessageId,
    ) -> Result<Option<StoredMessage>, HistoryError> {
        let Some(key) = self
            .store
            .get(HISTORY_IDS, &crate::records::message_key(conversation, &id))?
        else {
            return Ok(None);
        };
        let Some(value) = self.store.get(HISTORY, &key)? else {
            return Ok(None);
        };
        postcard::from_bytes(&value)
            .map(Some)
            .map_err(|e| HistoryError::Damaged(e.to_string()))
    }

    /// The highest Lamport counter in the conversation, for the next
    /// message to exceed.
    pub fn last_lamport(&self, conversation: &[u8; 16]) -> Result<Lamport, HistoryError> {
        let newest = self.page(conversation, None, 1)?;
        Ok(newest
            .messages
            .last()
            .map_or(Lamport(0), |m| m.message.lamport))
    }

    /// Up to `limit` (at most [`MAX_PAGE`]) messages before `older` (or the
    /// newest, when `None`), oldest first.
    pub fn page(
        &self,
        conversation: &[u8; 16],
        older: Option<&Cursor>,
        limit: usize,
    ) -> Result<Page, HistoryError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let start = conversation.to_vec();
        let end = kith_store::prefix_successor(conversation);
        let upper = match (older, &end) {
            (Some(cursor), _) if cursor.0.starts_with(conversation) => {
                Bound::Excluded(cursor.0.as_slice())
            }
            (_, Some(end)) => Bound::Excluded(end.as_slice()),
            (_, None) => Bound::Unbounded,
        };
        // One extra entry tells whether older messages remain.
        let mut entries = self.store.range(
            HISTORY,
            Bound::Included(start.as_slice()),
            upper,
            Direction::Reverse,
            limit + 1,
        )?;
        let more = entries.len() > limit;
        entries.truncate(limit);
        entries.reverse();
        let older =
            more.then(|| Cursor(entries.first().map(|(k, _)| k.clone()).unwrap_or_default()));
        let messages = entries
            .into_iter()
            .map(|(_, v)| {
                postcard::from_bytes(&v).map_err(|e| HistoryError::Damaged(e.to_string()))
            })
            .collect::<Result<Vec<StoredMessage>, _>>()?;
        Ok(Page { messages, older })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use kith_store::MemoryBackend;

    use super::*;

    fn store() -> Store {
        Store::open(Arc::new(MemoryBackend::new()), None, 1, &[]).unwrap()
    }

    fn message(lamport: u64, sent_at: u64, id: u8, body: &str) -> StoredMessage {
        StoredMessage {
            message: ChatMessage {
                id: MessageId([id; 16]),
                sent_at: Timestamp(sent_at),
                lamport: Lamport(lamport),
                body: body.into(),
            },
            author: Author::Friend,
            stored_at: Timestamp(0),
        }
    }

    #[test]
    fn a_message_arriving_twice_is_kept_once() {
        let store = store();
        let history = History::new(&store);
        let chat = history.conversation(&[1; 32]);
        assert_eq!(
            history.insert(&chat, message(1, 10, 1, "hi")).unwrap(),
            Inserted::New
        );
        assert_eq!(
            history.insert(&chat, message(1, 10, 1, "hi")).unwrap(),
            Inserted::Duplicate
        );
        // Same ID with different metadata is still the same message.
        assert_eq!(
            history.insert(&chat, message(5, 99, 1, "hi")).unwrap(),
            Inserted::Duplicate
        );
        assert_eq!(history.page(&chat, None, 10).unwrap().messages.len(), 1);
    }

    #[test]
    fn order_is_lamport_then_time_then_id_whatever_the_arrival_order() {
        let store = store();
        let history = History::new(&store);
        let chat = history.conversation(&[1; 32]);
        let arrivals = [
            message(2, 5, 9, "c"),
            message(1, 50, 3, "b"),
            message(1, 20, 7, "a"),
            message(2, 5, 1, "c-first"),
            message(3, 1, 0, "d"),
        ];
        for m in arrivals {
            history.insert(&chat, m).unwrap();
        }
        let bodies: Vec<String> = history
            .page(&chat, None, 10)
            .unwrap()
            .messages
            .into_iter()
            .map(|m| m.message.body)
            .collect();
        assert_eq!(bodies, ["a", "b", "c-first", "c", "d"]);
        assert_eq!(history.last_lamport(&chat).unwrap(), Lamport(3));
    }

    #[test]
    fn huge_lamport_counters_stay_in_their_conversation() {
        let store = store();
        let history = History::new(&store);
        let chat = history.conversation(&[1; 32]);
        history
            .insert(&chat, message(u64::MAX, 0, 1, "last"))
            .unwrap();
        let page = history.page(&chat, None, 10).unwrap();
        assert_eq!(page.messages.len(), 1);
        assert_eq!(kith_store::prefix_successor(&[1, 0xff]), Some(vec![2]));
        assert_eq!(kith_store::prefix_successor(&[0xff, 0xff]), None);
    }

    #[test]
    fn pages_walk_back_to_the_start_without_gaps_or_repeats() {
        let store = store();
        let history = History::new(&store);
        let chat = history.conversation(&[1; 32]);
        let other = history.conversation(&[2; 32]);
        for i in 0..25u8 {
            history
                .insert(&chat, message(u64::from(i), 0, i, &i.to_string()))
                .unwrap();
            history
                .insert(&other, message(u64::from(i), 0, i, "other"))
                .unwrap();
        }
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = history.page(&chat, cursor.as_ref(), 10).unwrap();
            let mut lamports: Vec<u64> =
                page.messages.iter().map(|m| m.message.lamport.0).collect();
            lamports.extend(seen);
            seen = lamports;
            match page.older {
                Some(older) => cursor = Some(older),
                None => break,
            }
        }
        assert_eq!(seen, (0..25).collect::<Vec<u64>>());
        assert_eq!(
            history
                .last_lamport(&history.conversation(&[3; 32]))
                .unwrap(),
            Lamport(0)
        );
    }
}
