using System.Buffers;
using System.IO.Pipelines;
using Google.Protobuf;

namespace BlockRepl.Replication.Grpc;

/// <summary>
/// A bidirectional streaming call (Grpc.Core's type of the same name): write requests through
/// <see cref="RequestStream"/>, read responses through <see cref="ResponseStream"/>, then
/// <see cref="GetStatus"/> once the response stream ended. Dispose it to cancel a call that has not ended.
/// </summary>
/// <remarks>
/// Invariants: one writer and one reader at a time (each side may run on its own task); the status is set
/// once, by the reader at the end of the response or by whichever side first sees the call fail, and
/// after that every write and read reports that status.
/// </remarks>
internal sealed class AsyncDuplexStreamingCall<TRequest, TResponse> : IClientStreamWriter<TRequest>, IAsyncStreamReader<TResponse>, IDisposable
    where TRequest : class, IMessage<TRequest>
    where TResponse : class, IMessage<TResponse>, new()
{
    private readonly DuplexRequestContent _content;
    private readonly ClientCallScope _scope;
    private readonly GrpcChannelOptions _options;
    private readonly HttpRequestMessage _request;
    private readonly Task<HttpResponseMessage> _responseTask;
    private readonly CancellationTokenRegistration _abortOnCancel;
    private HttpResponseMessage? _response;
    private PipeReader? _reader;
    private TResponse? _current;
    private Status? _status;
    private int _writing;
    private bool _requestCompleted;
    private bool _disposed;

    public AsyncDuplexStreamingCall(
        HttpMessageInvoker invoker, HttpRequestMessage request, DuplexRequestContent content, ClientCallScope scope, GrpcChannelOptions options)
    {
        _request = request;
        _content = content;
        _scope = scope;
        _options = options;
        _responseTask = invoker.SendAsync(request, scope.Token);

        // Cancellation or the deadline ends the request body too, so the HTTP/2 stream is reset even when
        // nobody is reading or writing at that moment.
        _abortOnCancel = scope.Token.UnsafeRegister(
            static state => ((DuplexRequestContent)state!).Abort(new OperationCanceledException("The call was cancelled.")), content);
    }

    public IClientStreamWriter<TRequest> RequestStream => this;

    public IAsyncStreamReader<TResponse> ResponseStream => this;

    TResponse IAsyncStreamReader<TResponse>.Current => _current ?? throw new InvalidOperationException("MoveNext has not returned true yet.");

    /// <summary>The final status; throws while the call is still running.</summary>
    public Status GetStatus() => _status ?? throw new InvalidOperationException("The call has not finished.");

    /// <summary>The response trailers (empty for a Trailers-Only response); throws while the call is still running.</summary>
    public IReadOnlyDictionary<string, string> GetTrailers()
    {
        _ = GetStatus();
        var trailers = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
        if (_response is { } response)
        {
            foreach (var (name, values) in response.TrailingHeaders)
            {
                trailers[name] = string.Join(',', values);
            }
        }

        return trailers;
    }

    async Task IAsyncStreamWriter<TRequest>.WriteAsync(TRequest message, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(message);
        if (Interlocked.Exchange(ref _writing, 1) != 0)
        {
            throw new InvalidOperationException("Can't write the message because the previous write is in progress.");
        }

        byte[]? buffer = null;
        try
        {
            ThrowIfEnded();
            if (_requestCompleted)
            {
                throw new InvalidOperationException("Request stream has already been completed.");
            }

            var size = message.CalculateSize();
            GrpcFraming.CheckSendSize(size, _options.MaxSendMessageSize);
            var stream = await GetRequestStreamAsync().ConfigureAwait(false);
            var length = GrpcFraming.HeaderSize + size;
            buffer = ArrayPool<byte>.Shared.Rent(length);
            GrpcFraming.WriteMessage(buffer.AsSpan(0, length), message, size);
            var token = _scope.Token;
            await stream.WriteAsync(buffer.AsMemory(0, length), token).ConfigureAwait(false);
            await stream.FlushAsync(token).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is not RpcException and not InvalidOperationException && _scope.TryMapException(ex) is { } mapped)
        {
            // Cancellation and the deadline end the call here. Any other write failure usually means the server
            // ended the call (e.g. with an error status): leave the call's status to the reader, which reads it
            // from the trailers, instead of overwriting it with a transport error.
            if (mapped.StatusCode is StatusCode.Cancelled or StatusCode.DeadlineExceeded)
            {
                throw Fail(mapped, ex);
            }

            throw new RpcException(mapped, ex);
        }
        finally
        {
            if (buffer is not null)
            {
                ArrayPool<byte>.Shared.Return(buffer);
            }

            Volatile.Write(ref _writing, 0);
        }
    }

    Task IClientStreamWriter<TRequest>.CompleteAsync()
    {
        _requestCompleted = true;
        _content.Complete();
        return Task.CompletedTask;
    }

    async Task<bool> IAsyncStreamReader<TResponse>.MoveNext(CancellationToken cancellationToken)
    {
        if (_status is { } ended)
        {
            return ended.StatusCode == StatusCode.OK ? false : throw new RpcException(ended);
        }

        using var registration = cancellationToken.CanBeCanceled
            ? cancellationToken.UnsafeRegister(static s => ((ClientCallScope)s!).Cancel(), _scope)
            : default;
        try
        {
            if (_reader is null)
            {
                var response = await _responseTask.ConfigureAwait(false);
                _response = response;
                if (GrpcChannel.ReadHeaderStatus(response) is { } headerStatus)
                {
                    return Finish(headerStatus);
                }

                var stream = await response.Content.ReadAsStreamAsync(_scope.Token).ConfigureAwait(false);
                _reader = PipeReader.Create(stream, new StreamPipeReaderOptions(bufferSize: 64 * 1024));
            }

            var message = await GrpcFraming.ReadMessageAsync(
                _reader, MessageParserCache<TResponse>.Parser, _options.MaxReceiveMessageSize, _scope.Token).ConfigureAwait(false);
            if (message is not null)
            {
                _current = message;
                return true;
            }

            return Finish(GrpcChannel.ReadTrailerStatus(_response!));
        }
        catch (RpcException ex) when (_status is null)
        {
            // A framing error (too large, compressed, truncated): the call is over; reset the stream.
            _scope.Cancel();
            throw Fail(ex.Status, ex);
        }
        catch (Exception ex) when (ex is not RpcException && _scope.TryMapException(ex) is { } mapped)
        {
            if (cancellationToken.IsCancellationRequested && mapped.StatusCode != StatusCode.DeadlineExceeded)
            {
                mapped = new Status(StatusCode.Cancelled, "Call canceled by the client.");
            }

            throw Fail(mapped, ex);
        }
    }

    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        if (_status is null)
        {
            // Still running: reset the stream (RST_STREAM CANCEL), so the server sees RequestAborted.
            _status = new Status(StatusCode.Cancelled, "Call was disposed.");
            _scope.Cancel();
        }

        _content.Complete();
        _abortOnCancel.Dispose();
        _reader?.Complete();
        _response?.Dispose();
        _request.Dispose();
        _scope.Dispose();
    }

    private async Task<Stream> GetRequestStreamAsync()
    {
        var streamTask = _content.RequestStream;
        if (!streamTask.IsCompleted)
        {
            // The body stream comes right after the request headers are sent; if the request fails before
            // that (connection refused), the response task is what completes.
            await Task.WhenAny(streamTask, _responseTask).ConfigureAwait(false);
            if (!streamTask.IsCompleted)
            {
                await _responseTask.ConfigureAwait(false);
                throw new RpcException(_status ?? new Status(StatusCode.Internal, "The server answered before the request body was sent."));
            }
        }

        return await streamTask.ConfigureAwait(false);
    }

    private void ThrowIfEnded()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_status is { } status)
        {
            throw new RpcException(status.StatusCode == StatusCode.OK
                ? new Status(StatusCode.Internal, "The call has already finished.")
                : status);
        }
    }

    private bool Finish(Status status)
    {
        _status ??= status;
        _content.Complete();
        if (status.StatusCode == StatusCode.OK)
        {
            return false;
        }

        throw new RpcException(status);
    }

    private RpcException Fail(Status status, Exception cause)
    {
        _status ??= status;
        _scope.Cancel();
        return new RpcException(_status.Value, cause);
    }
}
