// Loading the library: settings, shared memory, the launcher.
#include "death_forensics.hpp"
#include "heartbeat_cache.hpp"
#include "pg.hpp"
#include "reaper.hpp"
#include "reaper_registry.hpp"
#include "settings.hpp"
#include "settings_scaleout.hpp"

extern "C" {
#include "storage/ipc.h"

WH_MODULE_MAGIC;

PGDLLEXPORT void _PG_init(void);
}

namespace
{

shmem_request_hook_type previous_shmem_request_hook = nullptr;
shmem_startup_hook_type previous_shmem_startup_hook = nullptr;

void RequestSharedMemory()
{
	if (previous_shmem_request_hook)
		previous_shmem_request_hook();
	RequestAddinShmemSpace(wh::registry::ShmemSize());
	RequestAddinShmemSpace(wh::forensics::ShmemSize());
	wh::cache::RequestShmem();
}

void StartSharedMemory()
{
	if (previous_shmem_startup_hook)
		previous_shmem_startup_hook();
	wh::registry::Attach();
	wh::cache::InitShmem();
	(void)wh::forensics::Attach();
}

} // namespace

void _PG_init(void)
{
	wh::settings::DefineScaleout(); // before Define() reserves the prefix
	wh::settings::Define();
	// Without shared_preload_libraries there is no heartbeat cache and no
	// launcher; the registry is created on first use (reaper_registry.hpp).
	if (!process_shared_preload_libraries_in_progress)
		return;
	previous_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = RequestSharedMemory;
	previous_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = StartSharedMemory;
	wh::reaper::RegisterLauncher();
}
