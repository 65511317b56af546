//! The Kafka consumer half: a consumer group that hands records to the pipeline and commits
//! offsets only for records the sink reports durable.
