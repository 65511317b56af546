//! Test guest: appends the record metadata (topic, partition, offset, key, timestamp, first
//! header) the host reports for each row, and a `tag` param when given. With `at_init=true` it
//! also appends what `meta()` answered in `init` (`init_topic`, `init_partition`, `init_offset`),
//! and with `headers=true` every header as `headers`, `name=value` pairs joined by `;`.

use sluice_guest::{Error, Params, Row, Transform, Value};

struct Meta {
    tag: Option<String>,
    headers: bool,
    at_init: Option<sluice_guest::RecordMeta>,
}

impl Transform for Meta {
    fn init(params: &Params) -> Result<Self, Error> {
        params.allow_only(&["tag", "at_init", "headers"])?;
        Ok(Meta {
            tag: params.get("tag").map(str::to_owned),
            headers: params.get("headers") == Some("true"),
            at_init: (params.get("at_init") == Some("true")).then(sluice_guest::meta),
        })
    }

    fn transform(&mut self, mut row: Row) -> Result<Vec<Row>, Error> {
        let m = sluice_guest::meta();
        row.set("topic", Value::String(m.topic));
        row.set("partition", Value::Int(m.partition.into()));
        row.set("offset", Value::Int(m.offset));
        let key = m.key.map_or(Value::Null, |k| {
            Value::String(String::from_utf8_lossy(&k).into_owned())
        });
        row.set("key", key);
        row.set(
            "timestamp_ms",
            m.timestamp_ms.map_or(Value::Null, Value::Int),
        );
        let header = m
            .headers
            .first()
            .map_or(Value::Null, |h| Value::String(h.key.clone()));
        row.set("header", header);
        if self.headers {
            let all: Vec<String> = (m.headers.iter())
                .map(|h| format!("{}={}", h.key, String::from_utf8_lossy(&h.value)))
                .collect();
            row.set("headers", Value::String(all.join(";")));
        }
        if let Some(tag) = &self.tag {
            row.set("tag", Value::String(tag.clone()));
        }
        if let Some(m) = &self.at_init {
            row.set("init_topic", Value::String(m.topic.clone()));
            row.set("init_partition", Value::Int(m.partition.into()));
            row.set("init_offset", Value::Int(m.offset));
        }
        Ok(vec![row])
    }
}

sluice_guest::export!(Meta);
