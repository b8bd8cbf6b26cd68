//! Plan bodies stored once per shape (issue 25: each payload once).
//!
//! Chats of one kind make plans whose `plan_created` bodies are the same
//! but for the moment their intent was made: the same steps, the same
//! DSL, the request's text already left out ([`crate::body`]). That common
//! part, the *shape*, is stored once in `plan_shapes`, keyed by a hash of
//! its text; the event then carries `{"shape": id}` and what is the plan's
//! own (its intent's time). A body is stored as a shape only once it has
//! been seen twice: one that never repeats stays inline, as before, so a
//! shape costs nothing where it saves nothing. Shapes never change and
//! are never deleted (the database refuses both), so a shape a reader once
//! saw committed is there for good, and archives carry bodies expanded.

use crate::engine::sql::{Conn, OptionalExtension};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::sync::Mutex;

use crate::DbError;

/// The member of a `plan_created` payload that names its shape.
const SHAPE: &str = "shape";

/// The member of a body that is the plan's own, never part of a shape:
/// when its intent was made ([`crate::body`]).
const INTENT_AT: &str = "intent_at";

/// Shape ids remembered per database, in each set; past it a set starts
/// again (a forgotten shape costs one read, or one inline body).
const REMEMBERED: usize = 4_096;

/// A new plan's `plan_created` payload as it will be written, and the
/// shape its write must store first when the shape is not known stored.
pub(crate) struct Payload {
    pub(crate) text: String,
    pub(crate) new_shape: Option<NewShape>,
}

/// A shape to store with the plan that first refers to it.
pub(crate) struct NewShape {
    id: i64,
    body: String,
}

/// What one database's writers know of its shapes: the ids seen committed
/// (safe to refer to with no write) and the ids of bodies seen once.
#[derive(Default)]
pub(crate) struct Shapes {
    stored: Mutex<HashSet<i64>>,
    seen: Mutex<HashSet<i64>>,
}

fn remember(set: &Mutex<HashSet<i64>>, id: i64) -> bool {
    let mut set = set
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if set.len() >= REMEMBERED {
        set.clear();
    }
    set.insert(id)
}

fn knows(set: &Mutex<HashSet<i64>>, id: i64) -> bool {
    set.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .contains(&id)
}

/// The id of a shape's text: the first 53 bits of its SHA-256, so that
/// it is exact as a JSON number anywhere.
fn id_of(text: &str) -> i64 {
    let digest = Sha256::digest(text.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) >> 11) as i64
}

impl Shapes {
    /// The payload to write for a new plan's body: `shape`, the body's
    /// JSON object without its intent's time, and `intent_at`, that time.
    /// `stored` answers whether a shape is committed, through a reader;
    /// it is asked only about a body seen before and not yet known stored,
    /// and a `false` or an error there only means the write stores the
    /// shape again (a no-op when it is stored).
    pub(crate) fn payload(
        &self,
        shape: String,
        intent_at: Option<i64>,
        stored: impl FnOnce(i64) -> Result<bool, DbError>,
    ) -> Result<Payload, DbError> {
        let mut own = Map::new();
        if let Some(at) = intent_at {
            own.insert(INTENT_AT.into(), Value::from(at));
        }
        let id = id_of(&shape);
        let new_shape = if knows(&self.stored, id) {
            None
        } else if remember(&self.seen, id) {
            // Seen for the first time: a body that never repeats stays
            // inline.
            let mut body: Map<String, Value> = serde_json::from_str(&shape)?;
            body.extend(own);
            return Ok(Payload {
                text: serde_json::to_string(&body)?,
                new_shape: None,
            });
        } else if stored(id).unwrap_or(false) {
            remember(&self.stored, id);
            None
        } else {
            Some(NewShape { id, body: shape })
        };
        own.insert(SHAPE.into(), Value::from(id));
        Ok(Payload {
            text: serde_json::to_string(&own)?,
            new_shape,
        })
    }
}

impl NewShape {
    /// The shape's id.
    pub(crate) fn id(&self) -> i64 {
        self.id
    }
}

impl Shapes {
    /// Shape `id` is committed: the next plan of its shape refers to it
    /// with no write (the writer calls it after the commit that stored it).
    pub(crate) fn stored(&self, id: i64) {
        remember(&self.stored, id);
    }
}

/// True when shape `id` is stored.
pub(crate) fn is_stored(conn: &Conn<'_>, id: i64) -> Result<bool, DbError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM plan_shapes WHERE id = ?1")?
        .query_row([id], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Stores `shape` unless it is stored. Two different texts with one id
/// would make the database refuse the write (the table's rows never
/// change) rather than let a plan read another's body.
pub(crate) fn store(conn: &Conn<'_>, shape: &NewShape) -> Result<(), DbError> {
    conn.prepare_cached(
        "INSERT INTO plan_shapes (id, body) VALUES (?1, ?2)
         ON CONFLICT (id) DO UPDATE SET body = excluded.body
         WHERE CAST(plan_shapes.body AS TEXT) IS DISTINCT FROM CAST(excluded.body AS TEXT)",
    )?
    .run(rusqlite::params![shape.id, shape.body])?;
    Ok(())
}

/// A stored `plan_created` payload with its shape put back: the body as
/// it was made. A payload without a shape is the body itself.
pub(crate) fn expand(conn: &Conn<'_>, payload: Value) -> Result<Value, DbError> {
    let Value::Object(mut own) = payload else {
        return Ok(payload);
    };
    let Some(id) = own.remove(SHAPE) else {
        return Ok(Value::Object(own));
    };
    let id = id
        .as_i64()
        .ok_or_else(|| DbError::InvalidData(format!("a plan body names a shape {id}")))?;
    let text: String = conn
        .prepare_cached("SELECT body FROM plan_shapes WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?
        .ok_or_else(|| {
            DbError::InvalidData(format!("a plan body names shape {id}, which is not stored"))
        })?;
    let mut body: Map<String, Value> = serde_json::from_str(&text)?;
    body.extend(own);
    Ok(Value::Object(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_shape_id_is_exact_as_a_json_number() {
        for text in ["", "{}", "{\"steps\":[]}"] {
            let id = id_of(text);
            assert!((0..1 << 53).contains(&id));
            assert_eq!(Value::from(id).as_f64().map(|f| f as i64), Some(id));
        }
    }

    #[test]
    fn a_body_is_shaped_from_its_second_sighting_and_known_once_stored() {
        let shapes = Shapes::default();
        let shape = || r#"{"steps":[{"type":"CALL_HERMES"}]}"#.to_owned();
        let first = shapes
            .payload(shape(), Some(1), |_| panic!("not asked"))
            .unwrap();
        let whole = json!({"steps": [{"type": "CALL_HERMES"}], "intent_at": 1});
        assert_eq!(serde_json::from_str::<Value>(&first.text).unwrap(), whole);
        assert!(first.new_shape.is_none());

        let second = shapes.payload(shape(), Some(2), |_| Ok(false)).unwrap();
        let new = second.new_shape.expect("stored with the second");
        assert_eq!(new.body, r#"{"steps":[{"type":"CALL_HERMES"}]}"#);
        let written: Value = serde_json::from_str(&second.text).unwrap();
        assert_eq!(written, json!({"shape": new.id, "intent_at": 2}));

        let third = shapes.payload(shape(), Some(3), |_| Ok(true)).unwrap();
        assert!(third.new_shape.is_none());
        let fourth = shapes
            .payload(shape(), Some(4), |_| panic!("known"))
            .unwrap();
        assert!(fourth.new_shape.is_none());
        assert!(fourth.text.contains(&new.id.to_string()));
    }
}
