# A small Rack app for Puma under preforkd (plain Rack protocol: no gem but Puma).
#   GET /            -> "worker=<id> pid=<pid> gen=<generation>"
#   GET /sleep?ms=N  -> answers after N ms (a slow request)
require 'uri'

run lambda { |env|
  case env['PATH_INFO']
  when '/'
    body = "worker=#{ENV.fetch('PREFORKD_WORKER_ID', '-')} pid=#{Process.pid} gen=#{ENV.fetch('PREFORKD_GENERATION', '-')}\n"
  when '/sleep'
    ms = Integer(URI.decode_www_form(env['QUERY_STRING'].to_s).to_h.fetch('ms', '1000'))
    sleep(ms / 1000.0)
    body = "slept #{ms}ms\n"
  else
    next [404, { 'Content-Length' => '0' }, []]
  end
  [200, { 'Content-Type' => 'text/plain', 'Content-Length' => body.bytesize.to_s }, [body]]
}
