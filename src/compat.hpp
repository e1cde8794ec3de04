// Differences between PostgreSQL majors, in one place (after timescaledb's
// src/compat/compat.h). Every server API whose signature or meaning changed
// between the majors we build for is wrapped here once, under a name that
// says what it does, with the major it changed in. No other file tests
// PG_VERSION_NUM: `grep -rn PG_VERSION_NUM src/` finds only this one.
//
// Majors: 15, 17 and 18 are built and tested by ./scripts/test (see
// scripts/pg-versions); 16 is compiled only where its headers exist (Debian
// ships none for 16 on the test machine); 19 (released 2026-11-19, not yet in
// Debian) is written from its release notes and the headers' diffs and has
// never been compiled: every branch marked "PG 19, untested" may be wrong.
//
// Included by pg.hpp after the server headers; it includes the few extra
// headers its wrappers need.
#pragma once

extern "C" {
#include "postgres.h"

#include "access/genam.h"
#include "access/tableam.h"
#include "catalog/pg_class.h"
#include "fmgr.h"
#include "postmaster/bgworker.h"
#include "storage/lwlock.h"
#include "utils/acl.h"
#include "utils/snapshot.h"
}

// ---------------------------------------------------------------------------
// Which major we are compiled against.
#define WH_PG16_GE (PG_VERSION_NUM >= 160000)
#define WH_PG17_GE (PG_VERSION_NUM >= 170000)
#define WH_PG18_GE (PG_VERSION_NUM >= 180000)
#define WH_PG19_GE (PG_VERSION_NUM >= 190000)

// PostgreSQL 15 is the oldest major we build for (shmem_request_hook, 15).
#if PG_VERSION_NUM < 150000
#error "worker_heartbeat needs PostgreSQL 15 or newer"
#endif
// A major newer than the last one known here builds, but nothing says it works.
#if PG_VERSION_NUM >= 200000
#warning "worker_heartbeat: PostgreSQL 20 or newer is unknown to src/compat.hpp; check its wrappers"
#endif

// PG 19 requires a C11 compiler for its headers (f5e0186f8); they are read
// here by g++ in C++17 mode, where the C11 features they use (_Static_assert,
// alignas, standard attributes) have C++ equivalents the headers already
// select with __cplusplus. Nothing to wrap; noted so that the next reader of
// a PG 19 build error looks here first. (PG 19, untested.)

// ---------------------------------------------------------------------------
// Module magic. PG 18 (9324c8c58) added PG_MODULE_MAGIC_EXT, which records the
// library's name and version: pg_get_loaded_modules() shows them. WH_VERSION
// comes from the control file's default_version (Makefile).
#ifndef WH_VERSION
#define WH_VERSION "unknown"
#endif
#ifdef PG_MODULE_MAGIC_EXT
#define WH_MODULE_MAGIC PG_MODULE_MAGIC_EXT(.name = "worker_heartbeat", .version = WH_VERSION)
#else
#define WH_MODULE_MAGIC PG_MODULE_MAGIC
#endif

// ---------------------------------------------------------------------------
// Does roleid own the relation (or inherit a role that does)? PG 16 (c727f511)
// replaced the per-catalog pg_class_ownercheck with object_ownercheck.
static inline bool wh_relation_ownercheck(Oid relid, Oid roleid)
{
#if WH_PG16_GE
	return object_ownercheck(RelationRelationId, relid, roleid);
#else
	return pg_class_ownercheck(relid, roleid);
#endif
}

// ---------------------------------------------------------------------------
// A plain (non-parallel, non-bitmap) index scan of heap through index.
// PG 18 (0fbceae8) added an IndexScanInstrumentation* argument before nkeys:
// we pass none (no EXPLAIN ANALYZE counts for our internal scans).
// PG 19 adds a trailing uint32 flags argument (the table scan's ScanOptions,
// SO_NONE for a plain scan). (PG 19, untested.)
static inline IndexScanDesc wh_index_beginscan(Relation heap, Relation index, Snapshot snapshot, int nkeys,
                                               int norderbys)
{
#if WH_PG19_GE
	return index_beginscan(heap, index, snapshot, nullptr, nkeys, norderbys, SO_NONE);
#elif WH_PG18_GE
	return index_beginscan(heap, index, snapshot, nullptr, nkeys, norderbys);
#else
	return index_beginscan(heap, index, snapshot, nkeys, norderbys);
#endif
}

// A sequential scan of rel with the given snapshot and scan keys.
// PG 19 adds a trailing uint32 flags argument (SO_NONE: a plain scan; the
// SO_TYPE_SEQSCAN | SO_ALLOW_* bits are still added by table_beginscan
// itself). (PG 19, untested.)
static inline TableScanDesc wh_table_beginscan(Relation rel, Snapshot snapshot, int nkeys, ScanKeyData *key)
{
#if WH_PG19_GE
	return table_beginscan(rel, snapshot, nkeys, key, SO_NONE);
#else
	return table_beginscan(rel, snapshot, nkeys, key);
#endif
}

// ---------------------------------------------------------------------------
// Background workers. PG 19 added BGWORKER_INTERRUPTIBLE: a database-connected
// worker with it is terminated (like a backend) by CREATE DATABASE ...
// TEMPLATE, ALTER DATABASE RENAME / SET TABLESPACE and DROP DATABASE on its
// database, instead of making them fail with "being accessed by other
// users". Before 19 the flag does not exist: 0 here, and a per-database
// worker must get out of the way itself. (PG 19, untested.)
#ifdef BGWORKER_INTERRUPTIBLE
#define WH_BGWORKER_INTERRUPTIBLE BGWORKER_INTERRUPTIBLE
#else
#define WH_BGWORKER_INTERRUPTIBLE 0
#endif

// ---------------------------------------------------------------------------
// Which kind of process this is. PG 17 replaced the global
// IsBackgroundWorker by MyBackendType and the AmBackgroundWorkerProcess()
// macro.
#if WH_PG17_GE
#define wh_am_background_worker() AmBackgroundWorkerProcess()
#else
#define wh_am_background_worker() IsBackgroundWorker
#endif

// ---------------------------------------------------------------------------
// Shared memory.
//
// Preloaded (shared_preload_libraries): sizes are requested in the
// shmem_request_hook (PG 15+) and the structures attached in the
// shmem_startup_hook, with ShmemInitStruct. PG 19 (283e823f9) adds a
// registration API (ShmemRequestStruct / RegisterShmemCallbacks) that
// replaces that pair of hooks; ShmemInitStruct and the hooks are kept for
// compatibility, so our hooks work unchanged on 19 and nothing is wrapped
// yet. (PG 19, untested.)
//
// Not preloaded: the DSM registry (PG 17, storage/dsm_registry.h) gives a
// library shared memory found by name after startup. PG 19 gave the init
// callback an extra `void *arg` and GetNamedDSMSegment a matching trailing
// argument. WH_HAVE_DSM_REGISTRY says whether wh_get_named_dsm_segment exists.
#if WH_PG17_GE
#define WH_HAVE_DSM_REGISTRY 1
extern "C" {
#include "storage/dsm_registry.h"
}
// The init callback as we write it: one pointer, the new segment (zeroed).
using WhDsmInitCallback = void (*)(void *segment);
#if WH_PG19_GE
// PG 19, untested: the callback we are given rides in arg.
static inline void wh_dsm_init_trampoline(void *segment, void *arg)
{
	reinterpret_cast<WhDsmInitCallback>(arg)(segment);
}
#endif
static inline void *wh_get_named_dsm_segment(const char *name, size_t size, WhDsmInitCallback init, bool *found)
{
#if WH_PG19_GE
	return GetNamedDSMSegment(name, size, wh_dsm_init_trampoline, found, reinterpret_cast<void *>(init));
#else
	return GetNamedDSMSegment(name, size, init, found);
#endif
}
#else
#define WH_HAVE_DSM_REGISTRY 0
// Before 17 there is no DSM registry: no segment (callers keep their
// not-preloaded path).
using WhDsmInitCallback = void (*)(void *segment);
static inline void *wh_get_named_dsm_segment(const char *, size_t, WhDsmInitCallback, bool *found)
{
	*found = false;
	return nullptr;
}
#endif

// LWLocks in memory made after startup (a DSM segment) need a tranche id
// taken at run time: LWLockNewTrancheId() once, by whoever initialises the
// segment (the id is kept in the segment), and LWLockRegisterTranche() in
// every process that uses the locks, so that wait events name them. PG 19
// gives the name to LWLockNewTrancheId and drops LWLockRegisterTranche (the
// names live in shared memory). (PG 19, untested.)
static inline int wh_lwlock_new_tranche_id(const char *name)
{
#if WH_PG19_GE
	return LWLockNewTrancheId(name);
#else
	int id = LWLockNewTrancheId();
	LWLockRegisterTranche(id, name);
	return id;
#endif
}
static inline void wh_lwlock_register_tranche(int id, const char *name)
{
#if WH_PG19_GE
	(void)id;
	(void)name;
#else
	LWLockRegisterTranche(id, name);
#endif
}

// ---------------------------------------------------------------------------
// Considered for PG 18 and left (see docs/install.md "PostgreSQL 18"):
// custom cumulative-statistics kinds (pgstat_register_kind, PG 18) for the
// reaper's counters. They need the library preloaded (kinds are registered
// in _PG_init during shared_preload_libraries) and a kind id, and they would
// duplicate counters the extension already keeps and exposes on every major
// (metrics(), reaper_status()); only 18+ would have them. Not done.
