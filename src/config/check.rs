//! What `volley serve` refuses to start with, and what it warns about:
//! `Config::validate` (ranges clap's types do not express, and careless
//! configurations refused by name, docs/LIMITS.md) and
//! `Config::warnings` (logged at start).
//!
//! Runs once on the main thread, before any shard starts.

use super::*;

impl Config {
    /// Checks ranges that clap's types do not express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |knob, msg: &str| {
            Err(ConfigError::Invalid {
                knob,
                msg: msg.to_string(),
            })
        };
        if self.shards > 1024 {
            return bad("shards", "at most 1024");
        }
        if !self.cpus.is_empty() && self.shards != 0 && self.cpus.len() < self.shards {
            return bad("cpus", "fewer CPUs listed than shards");
        }
        if self.client.handshake_timeout_secs == 0 {
            return bad("[client] handshake_timeout_secs", "must be at least 1 second");
        }
        if self.client.heartbeat_timeout_secs == 0 {
            return bad("[client] heartbeat_timeout_secs", "must be at least 1 second");
        }
        if self.limits.max_body < 64 || self.limits.max_body > 16 << 20 {
            return bad("[limits] max_body", "must be between 64 bytes and 16 MiB");
        }
        if self.api.max_push_body == 0 || self.api.max_push_body > 16 << 20 {
            return bad("[api] max_push_body", "must be between 1 byte and 16 MiB");
        }
        if self.limits.outbound_limit < self.api.max_push_body + 64 {
            return bad(
                "[limits] outbound_limit",
                "must hold at least one push of [api] max_push_body",
            );
        }
        if self.limits.socket_sndbuf > i32::MAX as usize / 2 {
            return bad("[limits] socket_sndbuf", "at most 1 GiB");
        }
        if self.limits.outbound_limit > 1 << 30 {
            return bad("[limits] outbound_limit", "at most 1 GiB");
        }
        if self.limits.outbound_budget != 0 && self.limits.outbound_budget < self.limits.outbound_limit {
            return bad(
                "[limits] outbound_budget",
                "must hold at least one connection's outbound_limit (0 = derived from the host's memory)",
            );
        }
        if !self.ws.path.starts_with('/') || !self.ws.echo_path.starts_with('/') {
            return bad("[ws] path", "WebSocket paths start with /");
        }
        if self.ws.echo && self.ws.echo_path == self.ws.path {
            return bad("[ws] echo_path", "must differ from [ws] path");
        }
        if self.ws.echo_max_message > 1 << 30 {
            return bad("[ws] echo_max_message", "at most 1 GiB");
        }
        if self.api.key.as_deref() == Some("") {
            return bad("[api] key", "empty; unset it to disable the check");
        }
        for (knob, addr) in [
            ("[api] listen", self.api.listen),
            ("[api] publish_listen", self.api.publish_listen),
        ] {
            if self.api.key.is_none() && !addr.ip().is_loopback() {
                let msg = format!(
                    "{addr} is not a loopback address and [api] key is unset: whoever reaches it \
                     could push to every client; set [api] key (or listen on 127.0.0.1)"
                );
                return bad(knob, &msg);
            }
        }
        if self.api.header_timeout_secs == 0 || self.api.request_timeout_secs == 0 || self.api.idle_timeout_secs == 0 {
            return bad(
                "[api] header_timeout_secs",
                "the API's header, request and idle timeouts must be at least 1 second",
            );
        }
        if self.api.max_conns == 0 {
            return bad("[api] max_conns", "must be at least 1");
        }
        if self.auth.mode == AuthMode::Off && (!self.auth.jwt_secret.is_empty() || !self.auth.jwt_public_key.is_empty())
        {
            return bad(
                "[auth] mode",
                "token keys are configured but [auth] mode is off, so no client would be asked \
                 for a token; set [auth] mode = \"jwt\" (or remove the keys)",
            );
        }
        if self.auth.dev_tokens && !self.api.listen.ip().is_loopback() {
            return bad(
                "[auth] dev_tokens",
                "the development token endpoint signs a token for any user; it is served only \
                 on a loopback [api] listen",
            );
        }
        if self.ws.echo && !self.ws.listen.ip().is_loopback() {
            return bad(
                "[ws] echo",
                "the echo endpoint (conformance testing) buffers whole messages before auth; \
                 it is served only on a loopback [ws] listen",
            );
        }
        if self.auth.mode == AuthMode::Jwt && self.auth.jwt_secret.is_empty() && self.auth.jwt_public_key.is_empty() {
            return bad("[auth] jwt_secret", "mode jwt needs a jwt_secret or a jwt_public_key");
        }
        if self.auth.jwt_secret.iter().any(|s| s.len() < 32) {
            return bad("[auth] jwt_secret", "each HS256 secret must be at least 32 bytes");
        }
        if self.auth.dev_tokens && (self.auth.mode != AuthMode::Jwt || self.auth.jwt_secret.is_empty()) {
            return bad("[auth] dev_tokens", "needs mode jwt and a jwt_secret to sign with");
        }
        if self.client.publish_rate == 0 || self.client.publish_burst == 0 {
            return bad("[client] publish_rate", "rate and burst must be at least 1");
        }
        if self.client.room_op_rate == 0 || self.client.room_op_burst == 0 {
            return bad("[client] room_op_rate", "rate and burst must be at least 1");
        }
        if self.client.presence_limit == 0 || self.client.presence_limit > 10_000 {
            return bad("[client] presence_limit", "must be between 1 and 10000");
        }
        for url in &self.redis.urls {
            if let Err(e) = crate::redis::RedisUrl::parse(url) {
                return bad("[redis] urls", &e);
            }
        }
        if self.redis.urls.len() > 64 {
            return bad("[redis] urls", "at most 64 instances");
        }
        if self.client.flush_delay_ms > 1_000 {
            return bad("[client] flush_delay_ms", "must be at most 1000");
        }
        if self.client.max_rooms == 0 || self.client.max_rooms > 100_000 {
            return bad("[client] max_rooms", "must be between 1 and 100000");
        }
        let h = &self.history;
        let policies = std::iter::once(h.policy("")).chain(h.overrides.iter().map(|o| o.policy));
        for p in policies {
            if p.messages > 1_000_000 {
                return bad("[history] messages", "at most 1000000 per room");
            }
            if p.messages > 0 && (p.max_age == 0 || p.bytes == 0) {
                return bad(
                    "[history] max_age_secs",
                    "a room that keeps messages needs an age and a byte limit",
                );
            }
        }
        let st = &self.storage;
        if !(1 << 20..=1 << 30).contains(&st.segment_bytes) {
            return bad("[storage] segment_bytes", "must be between 1 MiB and 1 GiB");
        }
        if st.sync_interval_ms == 0 || st.sync_interval_ms > 600_000 {
            return bad("[storage] sync_interval_ms", "must be between 1 and 600000");
        }
        if st.sync_window_us > 100_000 {
            return bad("[storage] sync_window_us", "must be at most 100000 (0.1 s)");
        }
        let shards = self.nr_shards() as u64;
        if st.max_bytes > 0 && st.max_bytes / shards < 4 * st.segment_bytes {
            return bad(
                "[storage] max_bytes",
                "must give each shard at least four segments (segment_bytes)",
            );
        }
        if st.dir.as_os_str().is_empty() {
            return bad("[storage] dir", "must name a folder");
        }
        Ok(())
    }

    /// What in this configuration a server facing the internet should not
    /// run with, though it may on a trusted network: one line each, logged
    /// as warnings at start.
    pub fn warnings(&self) -> Vec<String> {
        let public: Vec<SocketAddr> = [self.tcp.listen, self.ws.listen]
            .into_iter()
            .filter(|a| !a.ip().is_loopback())
            .collect();
        if public.is_empty() {
            return Vec::new();
        }
        let on = public.iter().map(ToString::to_string).collect::<Vec<_>>().join(" and ");
        let mut w = Vec::new();
        if self.auth.mode == AuthMode::Off {
            w.push(format!(
                "[auth] mode is off: any client reaching {on} may claim any user id and join any room \
                 (production runs --auth-mode jwt)"
            ));
        }
        let l = &self.limits;
        for (knob, v) in [
            ("max_conns_per_ip", l.max_conns_per_ip),
            ("conn_rate_per_ip", l.conn_rate_per_ip),
            ("max_handshakes_per_ip", l.max_handshakes_per_ip),
        ] {
            if v == 0 {
                w.push(format!(
                    "[limits] {knob} = 0 on {on}: one host may take every connection the server can hold"
                ));
            }
        }
        w
    }
}
