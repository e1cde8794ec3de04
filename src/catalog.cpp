#include "catalog.hpp"

extern "C" {
#include "access/genam.h"
#include "access/table.h"
#include "catalog/indexing.h"
#include "catalog/pg_class.h"
#include "catalog/pg_extension.h"
#include "utils/acl.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/syscache.h"
}

#include <cstring>

namespace wh::catalog
{

bool FindExtension(Extension *out)
{
	// get_extension_schema() is not exported before PostgreSQL 16: read pg_extension.
	Relation rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyData key;
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber, F_NAMEEQ, CStringGetDatum("worker_heartbeat"));
	SysScanDesc scan = systable_beginscan(rel, ExtensionNameIndexId, true, nullptr, 1, &key);
	HeapTuple tuple = systable_getnext(scan);
	bool found = HeapTupleIsValid(tuple);
	if (found) {
		auto *form = reinterpret_cast<Form_pg_extension>(GETSTRUCT(tuple));
		out->oid = form->oid;
		out->schema = form->extnamespace;
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	if (!found)
		return false;
	char *name = get_namespace_name(out->schema);
	if (!name)
		return false;
	out->schema_quoted = quote_identifier(name);
	return true;
}

bool FindExtensionCached(Extension *out)
{
	// DROP EXTENSION drops the table, ALTER EXTENSION SET SCHEMA moves it,
	// ALTER SCHEMA RENAME renames the schema: each breaks one of the checks.
	static Extension cached;
	static Oid marker = InvalidOid; // worker_heartbeats of the cached extension
	static char *schema_name = nullptr;
	if (marker != InvalidOid && get_rel_namespace(marker) == cached.schema) {
		char *name = get_namespace_name(cached.schema);
		if (name && strcmp(name, schema_name) == 0) {
			*out = cached;
			return true;
		}
	}
	marker = InvalidOid;
	if (!FindExtension(out))
		return false;
	Oid table = get_relname_relid("worker_heartbeats", out->schema);
	char *name = get_namespace_name(out->schema);
	if (table == InvalidOid || !name)
		return true; // found, but not cacheable: ask again next time
	if (cached.schema_quoted)
		pfree(const_cast<char *>(cached.schema_quoted));
	cached = *out;
	cached.schema_quoted = MemoryContextStrdup(TopMemoryContext, out->schema_quoted);
	if (schema_name)
		pfree(schema_name);
	schema_name = MemoryContextStrdup(TopMemoryContext, name);
	marker = table;
	return true;
}

Extension RequireExtension()
{
	Extension ext;
	if (!FindExtension(&ext))
		ereport(ERROR, (errcode(ERRCODE_UNDEFINED_OBJECT),
		                errmsg("extension \"worker_heartbeat\" is not installed in this database"),
		                errhint("CREATE SCHEMA pm_pipeline; CREATE EXTENSION worker_heartbeat SCHEMA pm_pipeline;")));
	return ext;
}

char *Qualified(const Extension &ext, const char *object)
{
	return psprintf("%s.%s", ext.schema_quoted, quote_identifier(object));
}

Oid RelationOwner(Oid relid)
{
	HeapTuple tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tuple))
		return InvalidOid;
	Oid owner = reinterpret_cast<Form_pg_class>(GETSTRUCT(tuple))->relowner;
	ReleaseSysCache(tuple);
	return owner;
}

bool IsOwner(Oid relid, Oid roleid)
{
	return wh_relation_ownercheck(relid, roleid);
}

} // namespace wh::catalog
