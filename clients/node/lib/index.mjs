// ESM entry: the same objects as the CommonJS entry (one implementation, so
// `instanceof StaleLeaseError` holds whichever way it was loaded).
import cjs from './index.cjs';

export const {
  DIRECTIVES,
  WorkerHeartbeat,
  LeaseTable,
  StaleLeaseError,
  WorkerHeartbeatError,
  cleanupDeadWorkers,
  getWorkerHealthSummary,
  defaultWorkerId,
} = cjs;
export default cjs;
