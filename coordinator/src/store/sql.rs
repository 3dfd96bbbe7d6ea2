//! The [`Store`](super::Store) implementation shared by SQLite and
//! PostgreSQL, written once as a macro (see [`super::sql_rows`] for why).
//!
//! A backend type expanding it provides:
//! - a field `pool: sqlx::Pool<DB>`;
//! - `async fn write(&self) -> Result<Tx, StoreError>`: a transaction in
//!   which this writer runs alone (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: a
//!   transaction-level advisory lock), so read-modify-write steps such as
//!   address allocation and label edits never interleave across processes;
//! - `async fn netmaps_recorded(&self, tx: &mut Tx) -> Result<(), StoreError>`:
//!   called inside the transaction that recorded new netmap versions (the
//!   PostgreSQL change feed notifies other coordinators on commit);
//! - `async fn maintenance(&self) -> Result<Option<Tx>, StoreError>`: the
//!   maintenance pass's transaction, a writer's (see `write`) that no other
//!   coordinator's pass runs beside, or `None` when one is running now.

macro_rules! sql_store {
    ($store:ty, $db:ty) => {
        super::sql_rows::sql_rows!($db);

        #[async_trait::async_trait]
        impl Store for $store {
            async fn create_token(
                &self,
                new: NewToken,
                change: &Change,
            ) -> Result<TokenRecord, StoreError> {
                use sqlx::Row as _;
                let mut tx = self.write().await?;
                let id: i64 = sqlx::query(
                    "INSERT INTO tokens (secret_sha256, name_prefix, labels, created_at, \
                     expires_at, uses_total, uses_left, created_by) \
                     VALUES ($1, $2, $3, $4, $5, $6, $6, $7) RETURNING id",
                )
                .bind(hex(&new.secret_sha256))
                .bind(&new.name_prefix)
                .bind(to_json(&new.labels))
                .bind(change.at)
                .bind(new.expires_at)
                .bind(i64::from(new.uses))
                .bind(&change.actor)
                .fetch_one(&mut *tx)
                .await?
                .try_get("id")?;
                let details = serde_json::json!({
                    "token": id, "labels": new.labels, "name_prefix": new.name_prefix,
                    "expires_at": new.expires_at, "uses": new.uses,
                });
                audit_tx(&mut tx, "token.create", &details, change).await?;
                let row = sqlx::query("SELECT * FROM tokens WHERE id = $1")
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
                let rec = token_row(&row)?;
                tx.commit().await?;
                Ok(rec)
            }

            async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
                sqlx::query("SELECT * FROM tokens ORDER BY id")
                    .fetch_all(&self.pool)
                    .await?
                    .iter()
                    .map(token_row)
                    .collect()
            }

            async fn revoke_token(
                &self,
                id: i64,
                change: &Change,
            ) -> Result<TokenRecord, StoreError> {
                let mut tx = self.write().await?;
                let row = sqlx::query(
                    "UPDATE tokens SET revoked = TRUE, ended_at = COALESCE(ended_at, $2) \
                     WHERE id = $1 RETURNING *",
                )
                .bind(id)
                .bind(change.at)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("token {id}")))?;
                let details = serde_json::json!({ "token": id });
                audit_tx(&mut tx, "token.revoke", &details, change).await?;
                let rec = token_row(&row)?;
                tx.commit().await?;
                Ok(rec)
            }

            async fn enroll(
                &self,
                req: &EnrollRequest,
                prefixes: &Prefixes,
                sign: CertSigner<'_>,
                at: UnixTime,
            ) -> Result<(NodeRecord, IssuedCert), StoreError> {
                let mut tx = self.write().await?;
                let token = sqlx::query("SELECT * FROM tokens WHERE secret_sha256 = $1")
                    .bind(hex(&req.secret_sha256))
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or(StoreError::Token(TokenRefusal::Unknown))?;
                let token = token_row(&token)?;
                if token.revoked {
                    return Err(StoreError::Token(TokenRefusal::Revoked));
                }
                if token.expires_at <= at {
                    return Err(StoreError::Token(TokenRefusal::Expired));
                }
                if token.uses_left == 0 {
                    return Err(StoreError::Token(TokenRefusal::UsedUp));
                }
                let key_taken = sqlx::query("SELECT 1 FROM nodes WHERE public_key = $1")
                    .bind(req.public_key.to_string())
                    .fetch_optional(&mut *tx)
                    .await?;
                if key_taken.is_some() {
                    return Err(StoreError::Conflict(
                        "this WireGuard public key is already enrolled".into(),
                    ));
                }
                let name =
                    choose_name(&mut tx, req.name.as_ref(), token.name_prefix.as_deref()).await?;
                let (a4, a6) = allocate(&mut tx, prefixes).await?;
                let cert = sign(&name).map_err(StoreError::Sign)?;
                sqlx::query(
                    "INSERT INTO nodes (name, labels, public_key, addr_v4, addr_v6, endpoints, \
                     cert_serial, token_id, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(name.as_str())
                .bind(to_json(&token.labels))
                .bind(req.public_key.to_string())
                .bind(a4.to_string())
                .bind(a6.to_string())
                .bind(to_json(&req.endpoints))
                .bind(&cert.serial_hex)
                .bind(token.id)
                .bind(at)
                .execute(&mut *tx)
                .await?;
                // The last use ends the token (its retention starts).
                sqlx::query(
                    "UPDATE tokens SET uses_left = uses_left - 1, \
                     ended_at = CASE WHEN uses_left = 1 THEN $2 ELSE ended_at END \
                     WHERE id = $1",
                )
                .bind(token.id)
                .bind(at)
                .execute(&mut *tx)
                .await?;
                let details = serde_json::json!({
                    "node": name, "token": token.id, "labels": token.labels,
                    "addresses": [a4.to_string(), a6.to_string()],
                    "public_key": req.public_key,
                });
                let change = Change::new(format!("token:{}", token.id), at);
                audit_tx(&mut tx, "node.enroll", &details, &change).await?;
                let node = node_tx(&mut tx, &name).await?;
                tx.commit().await?;
                Ok((node, cert))
            }

            async fn list_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
                sqlx::query("SELECT * FROM nodes ORDER BY name")
                    .fetch_all(&self.pool)
                    .await?
                    .iter()
                    .map(node_row)
                    .collect()
            }

            async fn node(&self, name: &NodeName) -> Result<Option<NodeRecord>, StoreError> {
                sqlx::query("SELECT * FROM nodes WHERE name = $1")
                    .bind(name.as_str())
                    .fetch_optional(&self.pool)
                    .await?
                    .as_ref()
                    .map(node_row)
                    .transpose()
            }

            async fn label_node(
                &self,
                name: &NodeName,
                set: &Labels,
                remove: &[String],
                change: &Change,
            ) -> Result<NodeRecord, StoreError> {
                let mut tx = self.write().await?;
                let node = node_tx(&mut tx, name).await?;
                let before = node.labels.clone();
                let mut labels = node.labels;
                for k in remove {
                    labels.remove(k);
                }
                labels.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
                sqlx::query("UPDATE nodes SET labels = $1 WHERE id = $2")
                    .bind(to_json(&labels))
                    .bind(node.id)
                    .execute(&mut *tx)
                    .await?;
                let details = serde_json::json!({ "node": name, "before": before, "after": labels });
                audit_tx(&mut tx, "node.label", &details, change).await?;
                let node = node_tx(&mut tx, name).await?;
                tx.commit().await?;
                Ok(node)
            }

            async fn revoke_node(
                &self,
                name: &NodeName,
                change: &Change,
            ) -> Result<NodeRecord, StoreError> {
                let mut tx = self.write().await?;
                let node = node_tx(&mut tx, name).await?;
                // A second revoke keeps the first time: the grace period
                // counts from when the node lost access.
                sqlx::query(
                    "UPDATE nodes SET revoked = TRUE, revoked_at = COALESCE(revoked_at, $2) \
                     WHERE id = $1",
                )
                .bind(node.id)
                .bind(change.at)
                .execute(&mut *tx)
                .await?;
                let details = serde_json::json!({ "node": name, "public_key": node.public_key });
                audit_tx(&mut tx, "node.revoke", &details, change).await?;
                let node = node_tx(&mut tx, name).await?;
                tx.commit().await?;
                Ok(node)
            }

            async fn set_endpoints(
                &self,
                name: &NodeName,
                endpoints: &[SocketAddr],
            ) -> Result<bool, StoreError> {
                let res = sqlx::query(
                    "UPDATE nodes SET endpoints = $1 WHERE name = $2 AND endpoints != $1",
                )
                .bind(to_json(&endpoints))
                .bind(name.as_str())
                .execute(&self.pool)
                .await?;
                Ok(res.rows_affected() > 0)
            }

            async fn rotate_key(
                &self,
                name: &NodeName,
                new_key: &PublicKey,
                change: &Change,
            ) -> Result<(PublicKey, NodeRecord), StoreError> {
                let mut tx = self.write().await?;
                let node = node_tx(&mut tx, name).await?;
                if node.revoked {
                    return Err(StoreError::Invalid(format!("node {name} is revoked")));
                }
                let taken = sqlx::query("SELECT 1 FROM nodes WHERE public_key = $1")
                    .bind(new_key.to_string())
                    .fetch_optional(&mut *tx)
                    .await?;
                if taken.is_some() {
                    return Err(StoreError::Conflict(
                        "this WireGuard public key is already enrolled".into(),
                    ));
                }
                sqlx::query("UPDATE nodes SET public_key = $1 WHERE id = $2")
                    .bind(new_key.to_string())
                    .bind(node.id)
                    .execute(&mut *tx)
                    .await?;
                let details =
                    serde_json::json!({ "node": name, "old": node.public_key, "new": new_key });
                audit_tx(&mut tx, "node.rotate_key", &details, change).await?;
                let updated = node_tx(&mut tx, name).await?;
                tx.commit().await?;
                Ok((node.public_key, updated))
            }

            async fn policy(&self) -> Result<Option<PolicyRecord>, StoreError> {
                sqlx::query("SELECT * FROM policy ORDER BY version DESC LIMIT 1")
                    .fetch_optional(&self.pool)
                    .await?
                    .as_ref()
                    .map(policy_row)
                    .transpose()
            }

            async fn apply_policy(
                &self,
                text: &str,
                details: serde_json::Value,
                change: &Change,
            ) -> Result<PolicyRecord, StoreError> {
                use sqlx::Row as _;
                let mut tx = self.write().await?;
                let version: i64 = sqlx::query(
                    "INSERT INTO policy (version, text, applied_at, applied_by) \
                     SELECT COALESCE(MAX(version), 0) + 1, $1, $2, $3 FROM policy \
                     RETURNING version",
                )
                .bind(text)
                .bind(change.at)
                .bind(&change.actor)
                .fetch_one(&mut *tx)
                .await?
                .try_get("version")?;
                let mut details = details;
                if let Some(obj) = details.as_object_mut() {
                    obj.insert("policy_version".into(), version.into());
                }
                audit_tx(&mut tx, "policy.apply", &details, change).await?;
                tx.commit().await?;
                Ok(PolicyRecord {
                    version: u64::try_from(version).map_err(|e| corrupt("version", e))?,
                    text: text.to_string(),
                    applied_at: change.at,
                    applied_by: change.actor.clone(),
                })
            }

            async fn record_netmaps(&self, maps: &[NetmapRecord]) -> Result<(), StoreError> {
                if maps.is_empty() {
                    return Ok(());
                }
                // One version per node and batch: the set-based statements
                // below compare each node once.
                let mut seen = std::collections::BTreeSet::new();
                if let Some(m) = maps.iter().find(|m| !seen.insert(m.node_id)) {
                    return Err(StoreError::Conflict(format!(
                        "node {} appears twice in one batch of netmap versions",
                        m.node_id
                    )));
                }
                let mut tx = self.write().await?;
                // A few statements per thousand nodes, not two per node:
                // each statement is a round trip (to SQLite's worker
                // thread, or to the PostgreSQL server), and an all-node
                // change at 10,000 nodes spent most of its time in them.
                for chunk in maps.chunks(BATCH_ROWS) {
                    let versions = chunk
                        .iter()
                        .map(|m| Ok((m.node_id, version_col(m.version)?)))
                        .collect::<Result<Vec<_>, StoreError>>()?;
                    // Compare-and-set: every version must be newer.
                    let mut q = sqlx::QueryBuilder::<$db>::new("WITH v(id, ver) AS (");
                    q.push_values(&versions, |mut b, (id, v)| {
                        b.push_bind(*id).push_bind(*v);
                    });
                    q.push(
                        ") UPDATE nodes SET netmap_version = v.ver FROM v \
                         WHERE v.id = nodes.id AND nodes.netmap_version < v.ver",
                    );
                    let res = q.build().execute(&mut *tx).await?;
                    if res.rows_affected() != chunk.len() as u64 {
                        return Err(StoreError::Conflict(format!(
                            "{} of {} netmap versions are not newer than the last ones recorded",
                            chunk.len() as u64 - res.rows_affected(),
                            chunk.len()
                        )));
                    }
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO netmaps (node_id, version, body) ",
                    );
                    q.push_values(chunk.iter().zip(&versions), |mut b, (m, (_, v))| {
                        b.push_bind(m.node_id).push_bind(*v).push_bind(m.body.as_str());
                    });
                    q.build().execute(&mut *tx).await?;
                }
                self.netmaps_recorded(&mut tx).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn ack_netmap(
                &self,
                node_id: i64,
                version: u64,
                at: UnixTime,
            ) -> Result<(), StoreError> {
                let mut tx = self.write().await?;
                if !ack_tx(&mut tx, node_id, version, at).await? {
                    return Err(StoreError::Invalid(format!(
                        "version {version} was never sent or is older than the last ack"
                    )));
                }
                tx.commit().await?;
                Ok(())
            }

            async fn ack_netmaps(
                &self,
                acks: &[(i64, u64)],
                at: UnixTime,
            ) -> Result<(), StoreError> {
                // The newest ack per node (a batch may hold several).
                let mut newest = std::collections::BTreeMap::new();
                for (node_id, version) in acks {
                    let v = newest.entry(*node_id).or_insert(0);
                    *v = (*v).max(version_col(*version)?);
                }
                let newest: Vec<(i64, i64)> = newest.into_iter().collect();
                let mut tx = self.write().await?;
                for chunk in newest.chunks(BATCH_ROWS) {
                    // As `ack_tx`, for a chunk at once: acks never go
                    // backwards and never name a version not sent.
                    let mut q = sqlx::QueryBuilder::<$db>::new("WITH a(id, ver) AS (");
                    q.push_values(chunk, |mut b, (id, v)| {
                        b.push_bind(*id).push_bind(*v);
                    });
                    q.push(") UPDATE nodes SET acked_at = ")
                        .push_bind(at)
                        .push(
                            ", acked_version = a.ver FROM a WHERE a.id = nodes.id \
                             AND nodes.acked_version <= a.ver AND nodes.netmap_version >= a.ver",
                        );
                    q.build().execute(&mut *tx).await?;
                    // Netmaps older than the acked one are superseded.
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "DELETE FROM netmaps WHERE version < \
                         (SELECT acked_version FROM nodes WHERE nodes.id = netmaps.node_id) \
                         AND node_id IN (",
                    );
                    let mut ids = q.separated(", ");
                    for (id, _) in chunk {
                        ids.push_bind(*id);
                    }
                    q.push(")");
                    q.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn latest_netmap(
                &self,
                node_id: i64,
            ) -> Result<Option<(u64, String)>, StoreError> {
                let row = sqlx::query(
                    "SELECT version, body FROM netmaps WHERE node_id = $1 \
                     ORDER BY version DESC LIMIT 1",
                )
                .bind(node_id)
                .fetch_optional(&self.pool)
                .await?;
                row.map(|r| Ok((u64_col(&r, "version")?, sqlx::Row::try_get(&r, "body")?)))
                    .transpose()
            }

            async fn acked_netmap(
                &self,
                node_id: i64,
            ) -> Result<Option<(u64, String)>, StoreError> {
                let row = sqlx::query(
                    "SELECT m.version, m.body FROM netmaps m JOIN nodes n ON n.id = m.node_id \
                     WHERE m.node_id = $1 AND m.version = n.acked_version",
                )
                .bind(node_id)
                .fetch_optional(&self.pool)
                .await?;
                row.map(|r| Ok((u64_col(&r, "version")?, sqlx::Row::try_get(&r, "body")?)))
                    .transpose()
            }

            /// Safe beside enrollment because the pass is a writer: it holds
            /// the writer lock from before it reads which nodes are due until
            /// its deletions commit, so an enrollment's lowest-free-address
            /// and name choice sees either all of the pass's deletions or
            /// none, never a row that is about to vanish, and no write
            /// (revoke, label, key rotation) interleaves with it. What a
            /// reclaimed node held was only reachable through its row:
            /// revoked nodes have no netmap slot, and its old certificate
            /// names a node that no longer exists, or one re-enrolled under
            /// that name with a new serial; `NodeAuth` refuses both.
            async fn maintain(
                &self,
                now: UnixTime,
                retention: &Retention,
            ) -> Result<Option<MaintenanceReport>, StoreError> {
                let Some(mut tx) = self.maintenance().await? else {
                    return Ok(None);
                };
                let report = maintain_tx(&mut tx, now, retention).await?;
                tx.commit().await?;
                Ok(Some(report))
            }

            async fn audit(
                &self,
                action: &str,
                details: serde_json::Value,
                change: &Change,
            ) -> Result<(), StoreError> {
                let mut tx = self.write().await?;
                audit_tx(&mut tx, action, &details, change).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn ping(&self) -> Result<(), StoreError> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn audit_log(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
                sqlx::query(
                    "SELECT * FROM (SELECT * FROM audit_log ORDER BY id DESC LIMIT $1) AS recent \
                     ORDER BY id",
                )
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(audit_row)
                .collect()
            }
        }

        super::maintain::maintain_tx!();

        /// Rows per multi-row statement: 3,000 bound values at most, under
        /// SQLite's and PostgreSQL's limits.
        const BATCH_ROWS: usize = 1000;

        /// A netmap version as the BIGINT column holds it.
        fn version_col(v: u64) -> Result<i64, StoreError> {
            i64::try_from(v).map_err(|e| StoreError::Invalid(e.to_string()))
        }

        /// Marks `version` applied if it was sent and is not older than the
        /// last ack; drops older netmaps. Returns whether it was recorded.
        async fn ack_tx(
            tx: &mut Tx,
            node_id: i64,
            version: u64,
            at: UnixTime,
        ) -> Result<bool, StoreError> {
            let v = i64::try_from(version).map_err(|e| StoreError::Invalid(e.to_string()))?;
            let res = sqlx::query(
                "UPDATE nodes SET acked_version = $1, acked_at = $2 \
                 WHERE id = $3 AND acked_version <= $1 AND netmap_version >= $1",
            )
            .bind(v)
            .bind(at)
            .bind(node_id)
            .execute(&mut **tx)
            .await?;
            if res.rows_affected() == 0 {
                return Ok(false);
            }
            sqlx::query("DELETE FROM netmaps WHERE node_id = $1 AND version < $2")
                .bind(node_id)
                .bind(v)
                .execute(&mut **tx)
                .await?;
            Ok(true)
        }
    };
}
pub(super) use sql_store;
