// An out-of-tree program built only from the installed headers and library:
//   g++ consumer.cpp $(pkg-config --cflags --libs worker_heartbeat_client)
#include <iostream>
#include <worker_heartbeat/client.hpp>

int main() {
  namespace wh = worker_heartbeat;
  std::string id = wh::default_worker_id("company_research", "host", 42);
  if (id != "company-research-host-42") return 1;
  try {
    wh::Connection c("host=127.0.0.1 port=1 connect_timeout=2");
    return 2;
  } catch (const wh::ConnectionError& e) {
    std::cout << "consumer ok: " << id << " / connection refused as expected" << std::endl;
  }
  return 0;
}
