//! The managed local Kafka-protocol broker (nisshi) started when no brokers are configured.
