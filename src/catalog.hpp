// Where the extension lives, and quoting helpers for generated SQL.
// Identifiers in generated SQL always come from the catalog and are quoted;
// values are always bound as parameters.
#pragma once

#include "pg.hpp"

namespace wh::catalog
{

struct Extension {
	Oid oid;
	Oid schema;
	const char *schema_quoted; // palloc'd, quote_identifier of the schema name
};

// False when worker_heartbeat is not installed in the current database.
bool FindExtension(Extension *out);
// FindExtension for the reaper, which asks every pass: the answer of the last
// call, kept while our worker_heartbeats table is still in the same schema
// under the same name (checked in the syscache, cheap and kept current by
// invalidation messages); looked up again otherwise.
bool FindExtensionCached(Extension *out);
// Like FindExtension, but raises a clear ERROR when missing.
Extension RequireExtension();

// "schema"."object" (palloc'd); object is a fixed name of ours.
char *Qualified(const Extension &ext, const char *object);

// Owner of a relation, InvalidOid when it does not exist.
Oid RelationOwner(Oid relid);
bool IsOwner(Oid relid, Oid roleid);

} // namespace wh::catalog
