using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using System.Net.Http.Headers;
using Google.Protobuf;

namespace BlockRepl.Replication.Grpc;

/// <summary>
/// The client side: calls over one SocketsHttpHandler speaking HTTP/2 with prior knowledge (h2c) to
/// <c>http://HOST:PORT</c>. Calls share the handler's connection pool; a channel is cheap to keep for the
/// life of a peer and must be disposed with it.
/// </summary>
internal sealed class GrpcChannel : IDisposable
{
    private static readonly MediaTypeHeaderValue GrpcContentType = new(GrpcProtocol.ContentType);

    private readonly HttpMessageInvoker _invoker;
    private readonly Uri _address;

    private GrpcChannel(Uri address, GrpcChannelOptions options, HttpMessageInvoker invoker)
    {
        _address = address;
        Options = options;
        _invoker = invoker;
    }

    public GrpcChannelOptions Options { get; }

    public static GrpcChannel ForAddress(Uri address, GrpcChannelOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(address);
        if (address.Scheme != Uri.UriSchemeHttp)
        {
            throw new ArgumentException($"'{address}': only http:// (h2c) addresses are supported", nameof(address));
        }

        options ??= new GrpcChannelOptions();
        var handler = new SocketsHttpHandler
        {
            ConnectTimeout = options.ConnectTimeout,
            EnableMultipleHttp2Connections = true,
            KeepAlivePingDelay = options.KeepAlivePingDelay,
            KeepAlivePingTimeout = options.KeepAlivePingTimeout,
            KeepAlivePingPolicy = HttpKeepAlivePingPolicy.Always,
            PooledConnectionIdleTimeout = Timeout.InfiniteTimeSpan,
            UseProxy = false,
            AllowAutoRedirect = false,
            AutomaticDecompression = DecompressionMethods.None,
        };
        if (options.ConnectCallback is { } connect)
        {
            handler.ConnectCallback = connect;
        }

        return new GrpcChannel(address, options, new HttpMessageInvoker(handler, disposeHandler: true));
    }

    /// <summary>A unary call: one request, one response; a non-OK status throws <see cref="RpcException"/>.</summary>
    public async Task<TResponse> CallUnaryAsync<TRequest, TResponse>(string path, TRequest request, CallOptions options = default)
        where TRequest : class, IMessage<TRequest>
        where TResponse : class, IMessage<TResponse>, new()
    {
        ArgumentNullException.ThrowIfNull(request);
        using var scope = new ClientCallScope(options);
        var size = request.CalculateSize();
        GrpcFraming.CheckSendSize(size, Options.MaxSendMessageSize);
        var body = new byte[GrpcFraming.HeaderSize + size];
        GrpcFraming.WriteMessage(body, request, size);
        var content = new ByteArrayContent(body);
        content.Headers.ContentType = GrpcContentType;
        using var httpRequest = CreateRequest(path, content, scope.Timeout);

        try
        {
            using var response = await _invoker.SendAsync(httpRequest, scope.Token).ConfigureAwait(false);
            if (ReadHeaderStatus(response) is { } headerStatus)
            {
                throw new RpcException(headerStatus.StatusCode == StatusCode.OK
                    ? new Status(StatusCode.Internal, "Trailers-Only response with status OK carries no message.")
                    : headerStatus);
            }

            var stream = await response.Content.ReadAsStreamAsync(scope.Token).ConfigureAwait(false);
            var reader = PipeReader.Create(stream);
            try
            {
                var parser = MessageParserCache<TResponse>.Parser;
                var message = await GrpcFraming.ReadMessageAsync(reader, parser, Options.MaxReceiveMessageSize, scope.Token).ConfigureAwait(false);
                var extra = message is null
                    ? null
                    : await GrpcFraming.ReadMessageAsync(reader, parser, Options.MaxReceiveMessageSize, scope.Token).ConfigureAwait(false);
                var status = ReadTrailerStatus(response);
                if (status.StatusCode != StatusCode.OK)
                {
                    throw new RpcException(status);
                }

                if (message is null || extra is not null)
                {
                    throw new RpcException(StatusCode.Internal, message is null
                        ? "Response did not include a message."
                        : "Unary response included more than one message.");
                }

                return message;
            }
            finally
            {
                await reader.CompleteAsync().ConfigureAwait(false);
            }
        }
        catch (Exception ex) when (ex is not RpcException && scope.TryMapException(ex) is { } mapped)
        {
            throw new RpcException(mapped, ex);
        }
    }

    /// <summary>
    /// Starts a bidirectional streaming call. The request goes out at once, and the first
    /// <c>RequestStream.WriteAsync</c> does not wait for the response headers (a standard server sends them
    /// only with its first reply). Dispose the call to cancel it if it has not ended.
    /// </summary>
    public AsyncDuplexStreamingCall<TRequest, TResponse> CallDuplex<TRequest, TResponse>(string path, CallOptions options = default)
        where TRequest : class, IMessage<TRequest>
        where TResponse : class, IMessage<TResponse>, new()
    {
        var scope = new ClientCallScope(options);
        var content = new DuplexRequestContent();
        content.Headers.ContentType = GrpcContentType;
        var httpRequest = CreateRequest(path, content, scope.Timeout);
        return new AsyncDuplexStreamingCall<TRequest, TResponse>(_invoker, httpRequest, content, scope, Options);
    }

    public void Dispose() => _invoker.Dispose();

    /// <summary>The status of a Trailers-Only or non-gRPC response; null for a normal response with messages to read.</summary>
    internal static Status? ReadHeaderStatus(HttpResponseMessage response)
    {
        if (response.StatusCode != HttpStatusCode.OK)
        {
            var code = GrpcProtocol.FromHttpStatus(response.StatusCode);
            var detail = GrpcProtocol.ReadStatus(response.Headers)?.Detail;
            return new Status(code, $"Bad gRPC response. HTTP status code: {(int)response.StatusCode}" + (string.IsNullOrEmpty(detail) ? "" : $" ({detail})"));
        }

        if (GrpcProtocol.ReadStatus(response.Headers) is { } trailersOnly)
        {
            return trailersOnly;
        }

        var contentType = response.Content.Headers.ContentType?.ToString();
        if (!GrpcProtocol.IsGrpcContentType(contentType))
        {
            return new Status(StatusCode.Internal, $"Bad gRPC response. Invalid content-type value: {contentType}");
        }

        return null;
    }

    /// <summary>The status in the trailers after the body ended; missing grpc-status is an error per the spec.</summary>
    internal static Status ReadTrailerStatus(HttpResponseMessage response) =>
        GrpcProtocol.ReadStatus(response.TrailingHeaders)
        ?? new Status(StatusCode.Unknown, "No grpc-status found on response.");

    private HttpRequestMessage CreateRequest(string path, HttpContent content, TimeSpan? timeout)
    {
        var request = new HttpRequestMessage(HttpMethod.Post, new Uri(_address, path))
        {
            Version = HttpVersion.Version20,
            VersionPolicy = HttpVersionPolicy.RequestVersionExact,
            Content = content,
        };
        request.Headers.TryAddWithoutValidation("te", "trailers");
        request.Headers.TryAddWithoutValidation("user-agent", GrpcProtocol.UserAgent);
        request.Headers.TryAddWithoutValidation(GrpcProtocol.AcceptEncodingHeader, "identity");
        if (timeout is { } t)
        {
            request.Headers.TryAddWithoutValidation(GrpcTimeout.HeaderName, GrpcTimeout.Format(t));
        }

        return request;
    }
}
