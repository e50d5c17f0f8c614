#include "proxy/http_io.hpp"

namespace sproxy::proxy {

void serialize_response_head(const HttpResponse& response, std::string& out) {
  // Mirrors basic_fields<>::writer (boost/beast/http/impl/fields.hpp): the stored reason
  // when there is one, otherwise the status code's standard reason.
  const unsigned version = response.version();
  const unsigned code = response.result_int();
  const char start[13] = {'H',
                          'T',
                          'T',
                          'P',
                          '/',
                          static_cast<char>('0' + version / 10),
                          '.',
                          static_cast<char>('0' + version % 10),
                          ' ',
                          static_cast<char>('0' + code / 100),
                          static_cast<char>('0' + (code / 10) % 10),
                          static_cast<char>('0' + code % 10),
                          ' '};
  const auto reason = response.reason();
  out.clear();
  out.append(start, sizeof start);
  out.append(reason.data(), reason.size());
  out.append("\r\n", 2);
  for (const auto& field : response.base()) {
    const auto name = field.name_string();
    const auto value = field.value();
    out.append(name.data(), name.size());
    out.append(": ", 2);
    out.append(value.data(), value.size());
    out.append("\r\n", 2);
  }
  out.append("\r\n", 2);
}

}  // namespace sproxy::proxy
